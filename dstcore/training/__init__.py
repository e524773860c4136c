"""Stage 6, training: run hyperparameters, the training loop and its stages."""
