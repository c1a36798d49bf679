"""Running an experiment: the session loop, preflight checks, evaluation, checkpoints and resume, probes, faults, base pre-training."""
