"""The BERT encoder and its pretraining heads, in plain torch (no Ray, no MLflow)."""
