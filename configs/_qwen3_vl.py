"""Shared parts of the published Qwen3-VL configs (ZwZ-2B/4B/8B are Qwen3-VL students).

Not a config itself (no get_config): student_qwen3_*.py import it. Training, data, mesh and GRPO
settings are those of configs/_qwen2_5_vl.py; the model, the processor and the buckets differ.
Values follow the Qwen3-VL-*-Instruct config.json and preprocessor_config.json files.
"""
import ml_collections

from configs import _qwen2_5_vl


def qwen3_vl_model(*, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim,
                   vocab_size, tie_word_embeddings, vision_depth, vision_hidden_size,
                   vision_intermediate_size, vision_num_heads, deepstack_visual_indexes,
                   num_position_embeddings=2304, mrope_section=(24, 20, 20)):
  """`config.model` of one Qwen3-VL size (token ids of the Qwen2 tokenizer the family shares)."""
  m = ml_collections.ConfigDict()
  m.name = "qwen3_vl"  # zwz_jax/models/registry.py
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "full"
  m.attention = "auto"  # as configs/_qwen2_5_vl.py
  m.attention_block = 512
  m.scan_layers = True  # as configs/_qwen2_5_vl.py
  m.vision = ml_collections.ConfigDict(dict(
      depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
      num_heads=vision_num_heads, out_hidden_size=hidden_size,  # the mergers project into the text width
      # Blocks whose outputs are merged and added to the first decoder layers' image tokens.
      deepstack_visual_indexes=tuple(deepstack_visual_indexes),
      in_channels=3, patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
      num_position_embeddings=num_position_embeddings,  # a learned 48x48 grid, resampled per image
      rope_theta=10000.0, layer_norm_eps=1e-6,
      max_images=8))  # as configs/_qwen2_5_vl.py
  m.text = ml_collections.ConfigDict(dict(
      vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
      num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
      head_dim=head_dim,  # not hidden_size / num_heads in general (4B: 2560 / 32 = 80, head_dim 128)
      mrope_section=tuple(mrope_section),  # interleaved t/h/w frequencies; sums to head_dim // 2
      rms_norm_eps=1e-6, rope_theta=5000000.0, tie_word_embeddings=tie_word_embeddings,
      max_position_embeddings=262144, attention_bias=False))
  m.image_token_id = 151655
  m.video_token_id = 151656
  m.vision_start_token_id = 151652
  m.vision_end_token_id = 151653
  return m


def qwen3_vl_processor(p):
  """Qwen3-VL's preprocessing in the `config.processor` section `p` (see _qwen2_5_vl.py)."""
  p.min_pixels = 65536  # the published shortest_edge: 64 tokens of 32x32 pixels
  # As for Qwen2.5-VL, at most 1280 visual tokens per image for training (HF's inference default,
  # 16777216 pixels, is 16384 tokens).
  p.max_pixels = 32 * 32 * 1280
  p.image_mean = (0.5, 0.5, 0.5)
  p.image_std = (0.5, 0.5, 0.5)
  p.system_prompt = ""  # Qwen3-VL's chat template adds no default system turn
  p.box_coordinates = "relative"  # `coords` grounding: boxes on Qwen3-VL's 0-1000 scale
  return p


def qwen3_vl_config(**sizes):
  """Full training config for one published Qwen3-VL size."""
  c = _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
      num_layers=sizes["num_layers"], num_heads=sizes["num_heads"], num_kv_heads=sizes["num_kv_heads"],
      vocab_size=sizes["vocab_size"], tie_word_embeddings=sizes["tie_word_embeddings"])
  c.model = qwen3_vl_model(**sizes)
  qwen3_vl_processor(c.processor)
  # No attention windows: an image's patches are not padded, so max_patches is 4 x its tokens
  # (1280 tokens at max_pixels = 5120 patches) and only needs to be a multiple of 4.
  c.data.buckets = ((1024, 3072), (1664, 5120))
  # Tensor parallelism must divide num_kv_heads (8), the vision heads (16) and the vision MLP
  # width (4096; 4304 = 16 * 269 for 8B): up to 8.
  return c
