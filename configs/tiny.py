"""Tiny Qwen2.5-VL student: the CPU default for tests and `make demo`.

The real architecture and config schema (configs/_qwen2_5_vl.py) with dimensions small enough for a
laptop CPU, every sharded dimension divisible by 8 on fsdp and by 4 on tensor so the sharding
tests run on any mesh of 8 devices, and fp32 so it can be compared with the PyTorch reference.
"""
from configs import _qwen2_5_vl


def get_config():
  c = _qwen2_5_vl.qwen2_5_vl_config(
      hidden_size=128,
      intermediate_size=256,
      num_layers=2,
      num_heads=8,
      num_kv_heads=4,  # grouped-query attention, and tensor parallelism up to 4
      vocab_size=512,
      tie_word_embeddings=False,
  )
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.remat = "none"
  # Layers unrolled: with two text and four vision layers there is no compile time to save, and on
  # XLA:CPU a scanned stack costs the step its parameter stacking, zeroed gradient stacks and loop
  # slices (bench/train_step.py's small case, one process: 955 ms scanned, 794 ms unrolled).
  # The students scan; tests/test_scan.py holds both ways equal.
  c.model.scan_layers = False

  v = c.model.vision
  v.depth = 4
  v.hidden_size = 64
  v.intermediate_size = 128
  v.num_heads = 4
  v.window_size = 56  # 2x2 merged tokens per window, so small images still get several windows
  v.fullatt_block_indexes = (1, 3)

  t = c.model.text
  t.mrope_section = (2, 3, 3)  # sums to head_dim // 2
  t.max_position_embeddings = 4096

  # The tiny tokenizer (zwz_jax.data.tiny_tokenizer) places Qwen's special tokens here.
  c.model.image_token_id = 505
  c.model.video_token_id = 506
  c.model.vision_start_token_id = 503
  c.model.vision_end_token_id = 504

  c.processor.max_pixels = 28 * 28 * 64
  c.processor.tokenizer = ""  # empty: build the tiny tokenizer

  d = c.data
  d.train = ("out/datagen_tiny",)  # written by configs/datagen_tiny.py
  d.global_batch_size = 8
  # At max_pixels = 64 merged tokens an image pads to at most 320 patches (16 per window) up to an
  # aspect ratio of 4:1, 368 up to 32:1 and 512 up to 64:1. The scene records (1344x1008) pad to 240
  # and take 170-216 tokens with overlay, 220-260 with coords: the middle bucket holds those, which
  # (320, 512) held at 47% of its patch slots; the last takes long prompts with extreme aspect
  # ratios or two images.
  d.buckets = ((224, 256), (320, 320), (320, 512))
  # Stream order: the fixtures and the demo hold a few dozen records, a look-ahead of several
  # batches would reorder much of an epoch.
  d.bucket_lookahead = 1
  d.num_workers = 0
  d.prefetch = 4

  tr = c.train
  tr.steps = 60
  tr.learning_rate = 3e-3
  tr.warmup_steps = 5
  tr.log_every = 5
  tr.checkpoint_every = 20
  return c
