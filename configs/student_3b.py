"""Qwen2.5-VL-3B-Instruct student: published hyper-parameters, for real runs.

Weights come from the HF checkpoint via launch/convert.py; set the tokenizer with
--config.processor.tokenizer=PATH (see configs/_qwen2_5_vl.py).

Slice: v5p:4x4x4 (v5p-128) with the default mesh (fsdp over all 64 chips) and
data.global_batch_size=64: 14.1 GiB per chip at the largest bucket (launch/compile.py).
"""
import _qwen2_5_vl  # sibling module; zwz_jax.config.load_config puts configs/ on the path


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
