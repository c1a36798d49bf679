"""Figures: numpy and matplotlib only, drawn in the drawing process (continual.figures.drawing)."""
