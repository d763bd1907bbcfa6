"""GRPO/DAPO on the 7B student: the paper's recipe (8 rollouts per prompt at temperature 1.0, binary
accuracy reward, group-normalised advantages, token-level loss, clip 0.2 / 0.28, no KL).

  python launch/train.py --config=configs/student_7b_grpo.py --workdir=gs://bucket/zwz-7b-grpo \
      --config.train.init_from=/ckpts/zwz-7b-sft --config.data.train="('/data/zwz_records',)" \
      --config.processor.tokenizer=/models/Qwen2.5-VL-7B-Instruct --multihost
"""
from configs import student_7b


def get_config():
  c = student_7b.get_config()
  c.trainer = "grpo"
  # Rollouts at Qwen's fine-tuning resolution (1280 merged tokens per image), the setting measured
  # on v5p:4x4x4; the SFT config's paper-resolution buckets are not yet compiled for RL.
  c.processor.max_pixels = 28 * 28 * 1280
  c.data.buckets = ((1024, 3072), (1664, 6144))
  c.data.global_batch_size = 128  # prompts per RL step (x 8 = 1024 responses)
  g = c.grpo
  g.num_generations = 8
  g.temperature = 1.0
  g.max_new_tokens = 1024
  g.overlong_buffer = 256
  g.num_minibatches = 4  # 4 updates of 256 responses per rollout batch
  tr = c.train
  tr.steps = 300
  tr.learning_rate = 1e-6
  tr.warmup_steps = 10
  tr.weight_decay = 0.01
  tr.checkpoint_every = 20
  # 8 sequences of ~2.4k tokens per device pass at the rollout bucket; accumulate to the mini-batch.
  tr.grad_accum_steps = 4
  return c
