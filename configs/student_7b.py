"""Qwen2.5-VL-7B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: v5p:4x4x4 (v5p-128) with the default mesh (fsdp over all 64 chips) and
data.global_batch_size=64 (one example per chip): 31.6 GiB per chip at the largest bucket, the
paper's resolution (25,088 tokens, 92,800 patches), and 10.9 GiB at (1664, 6144) (launch/compile.py).
The cost model's step at the largest bucket: 10.1 s, 50% MFU (--cost=extrapolated).
The smallest v5p slice: v5p:2x2x1 (4 chips) with --config.train.grad_accum_steps=16, 92.1 / 95.7 GiB
per chip, 162 s per step at the largest bucket (50% MFU). On v5e and v6e the largest bucket needs
a tensor axis, over which the residual stream between layers is split (sequence parallelism). The
smallest v6e slice: v6e:4x8 (32 chips) with --config.mesh.tensor=2 and
--config.train.grad_accum_steps=4, 29.2 / 31.25 GiB per chip. The smallest v5e slice: v5e:8x16
(128 chips) with --config.mesh.tensor=4 and --config.train.grad_accum_steps=2, 14.4 / 15.75 GiB
(v5e:16x16: 13.6). Without the largest bucket,
"--config.data.buckets=((1024, 3072), (1664, 6144), (6144, 24576))" and
--config.train.grad_accum_steps=2, v5e:4x8 (32 chips) takes 15.0 / 15.75 GiB per chip (measured
before sequence parallelism).
"""
from configs import _qwen2_5_vl


def get_config():
  c = _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=3584,
      intermediate_size=18944,
      num_layers=28,
      num_heads=28,
      num_kv_heads=4,
      vocab_size=152064,
      tie_word_embeddings=False,
  )
  # The authors' training resolution: images up to 16,777,216 pixels (21,316 merged tokens for a
  # square image; 92,800 window-padded patches at most, for aspect ratios up to 16:1) and prompts up
  # to 25,000 tokens. Small images keep their size; the buckets in between keep them cheap.
  c.processor.max_pixels = 16777216
  c.data.buckets = ((1024, 3072), (1664, 6144), (6144, 24576), (25088, 92800))
  return c
