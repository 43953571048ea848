"""Training and evaluation engine: loop, optimiser, schedule, checkpoints, distributed set-up."""
