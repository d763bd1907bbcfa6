"""Qwen2.5-VL-7B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: v5p:4x4x4 (v5p-128) with the default mesh (fsdp over all 64 chips) and
data.global_batch_size=64: 28.8 GiB per chip at the largest bucket (launch/compile.py); a v6e:8x8
slice is 1.6 GiB short.
"""
import _qwen2_5_vl  # sibling module; zwz_jax.config.load_config puts configs/ on the path


def get_config():
  return _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=3584,
      intermediate_size=18944,
      num_layers=28,
      num_heads=28,
      num_kv_heads=4,
      vocab_size=152064,
      tie_word_embeddings=False,
  )
