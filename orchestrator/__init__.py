"""Config, command line, the Ray Train loop, checkpoints, MLflow tracking and job submission."""
