"""MLflow tracking: the run of a training run, the metric sender, parameters, the UI."""
