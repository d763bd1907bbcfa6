"""Qwen3-VL-4B-Instruct student (ZwZ-4B): published hyper-parameters, for real runs.

Weights come from the HF checkpoint (--config.train.init_from=PATH or launch/convert.py); set the
tokenizer with --config.processor.tokenizer=PATH (see configs/_qwen3_vl.py).

Slice: v5p:4x4x4 (v5p-128) with the default mesh (fsdp over all 64 chips) and
data.global_batch_size=64: 20.7 GiB per chip at the largest bucket (launch/compile.py).
"""
import _qwen3_vl  # sibling module; zwz_jax.config.load_config puts configs/ on the path


def get_config():
  return _qwen3_vl.qwen3_vl_config(
      hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
      vocab_size=151936, tie_word_embeddings=True,
      vision_depth=24, vision_hidden_size=1024, vision_intermediate_size=4096, vision_num_heads=16,
      deepstack_visual_indexes=(5, 11, 17))
