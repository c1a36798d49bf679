"""Comparing methods: grids of configs x values x seeds, their executors, runs grouped without the seed, and the comparison table."""
