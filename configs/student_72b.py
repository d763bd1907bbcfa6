"""Qwen2.5-VL-72B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: v5p:2x4x4 (v5p-64, 32 chips), the smallest v5p slice it fits, with the default mesh (fsdp
over every chip), data.global_batch_size=64 and train.grad_accum_steps=2 (micro-batches of 32
examples, one per chip): 83.8 GiB per chip at the largest bucket (1664, 6144), est. 6.8 s per step
(48% MFU, launch/compile.py --cost=extrapolated).
Half the chips would not do: the fp32 parameters and Adam moments alone would take 51 GiB per chip,
and the temporaries that scale with them (the scanned layers' stacked copy, its gradient, the
accumulated gradient) double too. On a larger slice set train.grad_accum_steps so that a micro-batch
still divides over the chips (1 on 64 chips).
On v6e: v6e:8x16 (128 chips) with --config.mesh.tensor=2 and train.grad_accum_steps=1, 17.8 / 31.25
GiB per chip (v6e:8x8: 38.2 GiB with tensor=2, 34.7 with tensor=4). On v5e: v5e:16x16 (256 chips)
with --config.mesh.tensor=4 and train.grad_accum_steps=1, 8.7 / 15.75 GiB per chip (v5e:8x16 with
tensor=4: 17.7 GiB).
"""
from configs import _qwen2_5_vl


def get_config():
  c = _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=8192,
      intermediate_size=29568,
      num_layers=80,
      num_heads=64,
      num_kv_heads=8,
      vocab_size=152064,
      tie_word_embeddings=False,
  )
  c.train.grad_accum_steps = 2
  return c
