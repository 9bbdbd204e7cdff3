"""The training run: the driver, the per-worker loop, checkpoints, optimizers, resources and batch plans."""
