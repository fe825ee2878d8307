"""Model, tokenisation, data loading and the train/eval steps of each task type."""
