"""Fine-tuning a pretrained encoder on a labelled set (`bert-pretrain finetune`), on train/'s pieces.

`data.labelled` reads and checks the labelled rows and tokenizes them once on the driver; metrics.py scores
predictions (GLUE's numbers); worker.py is what every Ray Train rank runs (train/'s TrainStep, optimizer and
schedule, with the classification head of `model.heads`); driver.py plans the run (train/'s plan_batches),
runs one Ray Train fit per seed through train/'s trainer, and exports the best model with its tokenizer;
tracking.py records the parent and per-seed MLflow runs.
"""
