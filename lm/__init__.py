"""Model, sharding, optimisation, training loop, checkpoints, metrics, evaluation and sampling."""
