"""Measuring: pure functions of matrices and features (metrics, spatial disorder, statistics); nothing of the project is imported here."""
