"""continual bench: training cost as ratios measured in one process."""
