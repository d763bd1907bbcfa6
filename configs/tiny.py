"""Tiny Qwen2.5-VL student: the CPU default for tests and `make demo`.

Same architecture as the real students, dimensions small enough for a laptop CPU, and every
sharded dimension divisible by an (fsdp=4, tensor=2) mesh so the sharding tests run on it.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "qwen2_5_vl"
  c.model.dtype = "float32"  # activation/compute dtype
  c.model.param_dtype = "float32"

  v = c.model.vision = ml_collections.ConfigDict()
  v.depth = 4
  v.hidden_size = 32
  v.intermediate_size = 48
  v.num_heads = 2
  v.in_channels = 3
  v.patch_size = 14
  v.temporal_patch_size = 2
  v.spatial_merge_size = 2
  v.window_size = 56  # 2x2 merged tokens per window, so small images still get several windows
  v.out_hidden_size = 64
  v.fullatt_block_indexes = (1, 3)
  v.rope_theta = 10000.0
  v.rms_norm_eps = 1e-6
  v.tokens_per_second = 2

  t = c.model.text = ml_collections.ConfigDict()
  t.vocab_size = 512
  t.hidden_size = 64
  t.intermediate_size = 96
  t.num_layers = 2
  t.num_heads = 4
  t.num_kv_heads = 2
  t.rms_norm_eps = 1e-6
  t.rope_theta = 1000000.0
  t.mrope_section = (2, 3, 3)  # sums to head_dim // 2
  t.tie_word_embeddings = False
  t.max_position_embeddings = 4096

  # Special token ids; the tiny tokenizer (zwz_jax.data.tiny_tokenizer) places Qwen's special tokens here.
  c.model.image_token_id = 505
  c.model.video_token_id = 506
  c.model.vision_start_token_id = 503
  c.model.vision_end_token_id = 504

  p = c.processor = ml_collections.ConfigDict()
  p.min_pixels = 56 * 56
  p.max_pixels = 28 * 28 * 64
  p.image_mean = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
  p.image_std = (0.26862954, 0.26130258, 0.27577711)
  p.tokenizer = ""  # path to tokenizer.json; empty = build the tiny tokenizer
  p.system_prompt = "You are a helpful assistant."

  m = c.mesh = ml_collections.ConfigDict()
  m.data = 1
  m.fsdp = -1  # -1: all devices left after the other axes
  m.tensor = 1
  return c
