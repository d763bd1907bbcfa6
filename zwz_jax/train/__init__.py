"""Training: losses and steps, the loop, checkpoints, optimizers."""
