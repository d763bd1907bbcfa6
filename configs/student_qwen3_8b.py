"""Qwen3-VL-8B-Instruct student (ZwZ-8B, the paper's best: 58.1 on ZoomBench): published
hyper-parameters, for real runs.

Weights come from the HF checkpoint (--config.train.init_from=PATH or launch/convert.py); set the
tokenizer with --config.processor.tokenizer=PATH (see configs/_qwen3_vl.py).

Slice: v5p:4x4x4 (v5p-128) with the default mesh (fsdp over all 64 chips) and
data.global_batch_size=64 (one example per chip): 32.8 GiB per chip at the largest bucket, the
paper's resolution (25,088 tokens, 65,536 patches) (launch/compile.py); the cost model's step there:
15.1 s, 50% MFU (--cost=extrapolated).
The smallest v5p slice: v5p:2x2x2 (8 chips) with --config.train.grad_accum_steps=8, 62.4 / 95.7 GiB
per chip (on 4 chips, 99.2 GiB), 121 s per step at the largest bucket (50% MFU). The smallest v6e
slice: v6e:4x8 (32 chips) with --config.mesh.tensor=2 (over which the residual stream between layers
is split: sequence parallelism) and --config.train.grad_accum_steps=4, 25.8 / 31.25 GiB per chip
(on v6e:4x4, 33.7 GiB). The smallest v5e slice: v5e:8x8 (64 chips) with --config.mesh.tensor=4 and
--config.train.grad_accum_steps=4, 13.4 / 15.75 GiB (on v5e:4x8, 18.7). Without the largest
bucket, the third, (6144, 16384), fits v5e:4x8 (32 chips) with --config.mesh.tensor=2 and
--config.train.grad_accum_steps=4, 13.9 / 15.75 GiB per chip (fsdp alone: 15.9 on v5e:8x8; both
before sequence parallelism).
"""
from configs import _qwen3_vl


def get_config():
  c = _qwen3_vl.qwen3_vl_config(
      hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
      vocab_size=151936, tie_word_embeddings=False,  # the 8B alone has its own LM head
      vision_depth=27, vision_hidden_size=1152, vision_intermediate_size=4304, vision_num_heads=16,
      deepstack_visual_indexes=(8, 16, 24))
  # The authors' training resolution: images up to 16,777,216 pixels (16,384 merged tokens, 65,536
  # patches) and prompts up to 25,000 tokens.
  c.processor.max_pixels = 16777216
  c.data.buckets = ((1024, 3072), (1664, 5120), (6144, 16384), (25088, 65536))
  return c
