"""GRPO on the tiny student (CPU): the paper's RL recipe on the synthetic scene records.

  python launch/train.py --config=configs/tiny_grpo.py --workdir=out/grpo_tiny \
      --config.train.init_from=out/train_tiny     # start from the SFT run
"""
from configs import tiny


def get_config():
  c = tiny.get_config()
  c.trainer = "grpo"
  c.data.global_batch_size = 8  # prompts per RL step
  g = c.grpo
  g.num_generations = 4
  g.max_new_tokens = 4  # the tiny student answers with a letter
  g.num_minibatches = 2
  tr = c.train
  tr.steps = 20
  tr.learning_rate = 1e-3
  tr.warmup_steps = 0
  tr.log_every = 1
  tr.checkpoint_every = 10
  return c
