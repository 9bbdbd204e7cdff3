"""After pretraining: load a model, fill in masks, score sentence pairs, embed a corpus, evaluate."""
