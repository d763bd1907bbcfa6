"""Qwen2.5-VL-72B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: not yet compiled; check one with launch/compile.py --topology=... before a run.
"""
import _qwen2_5_vl  # sibling module; zwz_jax.config.load_config puts configs/ on the path


def get_config():
  return _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=8192,
      intermediate_size=29568,
      num_layers=80,
      num_heads=64,
      num_kv_heads=8,
      vocab_size=152064,
      tie_word_embeddings=False,
  )
