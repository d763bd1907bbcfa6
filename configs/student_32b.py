"""Qwen2.5-VL-32B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: v5p:2x2x4 (v5p-32, 16 chips), the smallest v5p slice it fits, with the default mesh (fsdp
over every chip), data.global_batch_size=64 and train.grad_accum_steps=4 (micro-batches of 16
examples, one per chip): 69.6 GiB per chip at the largest bucket (1664, 6144), est. 6.2 s per step
(49% MFU, launch/compile.py --cost=extrapolated).
Half the chips would not do: the fp32 parameters and Adam moments alone would take 47 GiB per chip,
and the temporaries that scale with them (the scanned layers' stacked copy, its gradient, the
accumulated gradient) double too. On a larger slice set train.grad_accum_steps so that a micro-batch
still divides over the chips (1 on 64 chips).
On v6e: v6e:8x8 (64 chips, fsdp alone), 22.5 / 31.25 GiB per chip. On v5e: v5e:8x8 (64 chips)
with --config.mesh.tensor=4 and train.grad_accum_steps=4, 14.6 / 15.75 GiB per chip (with tensor=2
it takes 17.3 GiB there; v5e:8x16 with tensor=2 and train.grad_accum_steps=1: 9.9).
"""
from configs import _qwen2_5_vl


def get_config():
  c = _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=5120,
      intermediate_size=27648,
      num_layers=64,
      num_heads=40,
      num_kv_heads=8,
      vocab_size=152064,
      tie_word_embeddings=False,
  )
  c.train.grad_accum_steps = 4
  return c
