"""Qwen3-VL-2B-Instruct student (ZwZ-2B): published hyper-parameters, for real runs.

Weights come from the HF checkpoint (--config.train.init_from=PATH or launch/convert.py); set the
tokenizer with --config.processor.tokenizer=PATH (see configs/_qwen3_vl.py).

Slice: v5e:8x8 or v5p:4x4x4 (64 chips) with the default mesh (fsdp over every chip) and
data.global_batch_size=64: 8.9 / 10.4 GiB per chip at the largest bucket (launch/compile.py).
"""
import _qwen3_vl  # sibling module; zwz_jax.config.load_config puts configs/ on the path


def get_config():
  return _qwen3_vl.qwen3_vl_config(
      hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
      vocab_size=151936, tie_word_embeddings=True,
      vision_depth=24, vision_hidden_size=1024, vision_intermediate_size=4096, vision_num_heads=16,
      deepstack_visual_indexes=(5, 11, 17))
