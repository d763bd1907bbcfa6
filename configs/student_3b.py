"""Qwen2.5-VL-3B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slices (launch/compile.py, largest bucket (1664, 6144), one example per chip per micro-batch): the
defaults (data.global_batch_size=64, fsdp over every chip, no accumulation) are for 64 chips; the
smallest slices take --config.train.grad_accum_steps=64/chips: v5p:2x2x1 (4 chips, 16 micro-batches)
28.4 / 95.7 GiB per chip, est. 6.2 s per step (33% MFU); v5e:4x4 (16 chips, 4) 11.2 / 15.75 GiB;
v6e:2x4 (8 chips, 8) 20.4 / 31.25 GiB.
"""
from configs import _qwen2_5_vl


def get_config():
  return _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=2048,
      intermediate_size=11008,
      num_layers=36,
      num_heads=16,
      num_kv_heads=2,
      vocab_size=151936,
      tie_word_embeddings=True,  # the 3B alone shares its embedding with the LM head
  )
