"""Qwen2.5-VL-7B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: v5p:4x4x4 (v5p-128) with the default mesh (fsdp over all 64 chips) and
data.global_batch_size=64 (one example per chip): 32.7 GiB per chip at the largest bucket, the
paper's resolution (25,088 tokens, 92,800 patches), and 10.9 GiB at (1664, 6144) (launch/compile.py).
The cost model's step at the largest bucket: 10.1 s, 50% MFU (--cost=extrapolated).
The smallest v5p slice: v5p:2x2x1 (4 chips) with --config.train.grad_accum_steps=16, 92.1 / 95.7 GiB
per chip, 162 s per step at the largest bucket (50% MFU). The smallest v6e slice: v6e:8x8 (64 chips) with --config.mesh.tensor=2 and
--config.train.grad_accum_steps=2, 28.2 / 31.25 GiB per chip (fsdp alone there: 31.7 GiB; on
v6e:4x8, 33.6 GiB). No v5e slice holds one example at the largest bucket (v5e:16x16 with
--config.mesh.tensor=4: 23.8 / 15.75 GiB). On v5e drop it: with
"--config.data.buckets=((1024, 3072), (1664, 6144), (6144, 24576))" and
--config.train.grad_accum_steps=2, v5e:4x8 (32 chips) takes 15.0 / 15.75 GiB per chip.
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
