"""Tiny Qwen3-VL student: configs/tiny.py's data, training and mesh with the Qwen3-VL architecture
(and configs/eval_tiny.py's eval section).

Dimensions for a laptop CPU, every sharded dimension divisible by 8 on fsdp and 4 on tensor, fp32
for comparison with the PyTorch reference. head_dim (32) is not hidden_size / num_heads (16), as in
the 4B, and two DeepStack features feed the first two of three decoder layers.
"""
from configs import _eval, _qwen3_vl, tiny


def get_config():
  c = tiny.get_config()
  c.model = _qwen3_vl.qwen3_vl_model(
      hidden_size=128, intermediate_size=256, num_layers=3, num_heads=8, num_kv_heads=4, head_dim=32,
      vocab_size=512, tie_word_embeddings=False,
      vision_depth=4, vision_hidden_size=64, vision_intermediate_size=128, vision_num_heads=4,
      deepstack_visual_indexes=(0, 2), num_position_embeddings=64,  # an 8x8 learned grid
      mrope_section=(6, 5, 5))
  c.model.dtype = "float32"
  c.model.remat = "none"
  c.model.scan_layers = False  # as configs/tiny.py
  c.model.text.max_position_embeddings = 4096
  # The tiny tokenizer (zwz_jax.data.tiny_tokenizer) places Qwen's special tokens here.
  c.model.image_token_id = 505
  c.model.video_token_id = 506
  c.model.vision_start_token_id = 503
  c.model.vision_end_token_id = 504
  _qwen3_vl.qwen3_vl_processor(c.processor)
  c.processor.min_pixels = 32 * 32 * 4
  c.processor.max_pixels = 32 * 32 * 64
  # At max_pixels an image is at most 64 tokens = 256 patches (no window padding).
  c.data.buckets = ((224, 256), (320, 512))
  return _eval.add_eval(c, batch_size=4, max_new_tokens=4)  # launch/eval.py takes it as is
