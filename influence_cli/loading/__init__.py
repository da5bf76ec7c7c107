"""Loaders: the model, its checkpoints and the data named by a recipe."""
