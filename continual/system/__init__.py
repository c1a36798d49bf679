"""System plumbing: torchrun process groups, signals, file locks, atomic writes."""
