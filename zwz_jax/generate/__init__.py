"""Generation: the batched KV-cache sampler, below both training (RL rollouts) and evaluation."""
