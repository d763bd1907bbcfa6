"""Qwen3-VL-4B-Instruct student (ZwZ-4B): published hyper-parameters, for real runs.

Weights come from the HF checkpoint (--config.train.init_from=PATH or launch/convert.py); set the
tokenizer with --config.processor.tokenizer=PATH (see configs/_qwen3_vl.py).

Slices (launch/compile.py, largest bucket (1664, 5120), one example per chip per micro-batch): the
defaults (data.global_batch_size=64, fsdp over every chip, no accumulation) are for 64 chips; the
smallest slices take --config.train.grad_accum_steps=64/chips: v5p:2x2x1 (4 chips, 16 micro-batches)
33.4 / 95.7 GiB per chip, est. 6.2 s per step (34% MFU); v5e:4x4 (16 chips, 4) 11.6 / 15.75 GiB;
v6e:2x4 (8 chips, 8) 19.3 / 31.25 GiB.
"""
from configs import _qwen3_vl


def get_config():
  return _qwen3_vl.qwen3_vl_config(
      hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
      vocab_size=151936, tie_word_embeddings=True,
      vision_depth=24, vision_hidden_size=1024, vision_intermediate_size=4096, vision_num_heads=16,
      deepstack_visual_indexes=(5, 11, 17))
