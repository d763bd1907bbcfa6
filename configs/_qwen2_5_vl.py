"""Shared parts of the published Qwen2.5-VL configs (same schema as tiny.py).

Not a config itself (no get_config): the student_*.py files import it and pass the
text-tower sizes, which are the only thing that differs between 3B, 7B, 32B and 72B.
Values follow the Qwen2.5-VL-*-Instruct config.json files.
"""
import ml_collections


def qwen2_5_vl_config(*, hidden_size, intermediate_size, num_layers, num_heads,
                      num_kv_heads, vocab_size, tie_word_embeddings):
  """Full training config for one published Qwen2.5-VL size."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "qwen2_5_vl"
  c.model.dtype = "bfloat16"  # activation/compute dtype
  c.model.param_dtype = "float32"  # fp32 master weights; the optimizer updates are tiny (lr ~1e-6)
  # Recompute each block's activations in the backward pass: none | full | dots | dots_no_batch.
  c.model.remat = "full"
  # Attention backend (zwz_jax/models/attention.py): auto = splash on TPU, cuDNN on GPU, blockwise
  # elsewhere, dense for short inputs; dense | chunked | splash | cudnn force one. Block = the tile
  # of chunked and splash.
  c.model.attention = "auto"
  c.model.attention_block = 512
  # One lax.scan per run of identical layers: the program and its compile time do not grow with
  # depth (parameters stay one module per layer: checkpoints and conversion are unchanged).
  c.model.scan_layers = True

  # Every size shares the same ViT; only the merger's output width follows the text tower.
  v = c.model.vision = ml_collections.ConfigDict()
  v.depth = 32
  v.hidden_size = 1280
  v.intermediate_size = 3420
  v.num_heads = 16
  v.in_channels = 3
  v.patch_size = 14
  v.temporal_patch_size = 2
  v.spatial_merge_size = 2
  v.window_size = 112  # 8x8 patches = 4x4 merged tokens per window
  v.out_hidden_size = hidden_size  # the merger projects straight into the text width
  v.fullatt_block_indexes = (7, 15, 23, 31)
  v.rope_theta = 10000.0
  v.rms_norm_eps = 1e-6
  v.tokens_per_second = 2
  # Images (video frames count one each) one example may hold. Records hold one; the agentic
  # baseline adds a crop per zoom. Bounds the runs of cuDNN's packed full attention (its softmax
  # statistics: 4 bytes x (max_images + 1) x heads x patches per example); batches refuse more.
  v.max_images = 8

  t = c.model.text = ml_collections.ConfigDict()
  t.vocab_size = vocab_size
  t.hidden_size = hidden_size
  t.intermediate_size = intermediate_size
  t.num_layers = num_layers
  t.num_heads = num_heads
  t.num_kv_heads = num_kv_heads
  t.rms_norm_eps = 1e-6
  t.rope_theta = 1000000.0
  t.mrope_section = (16, 24, 24)  # temporal, height, width; sums to head_dim // 2 = 64
  t.tie_word_embeddings = tie_word_embeddings
  t.max_position_embeddings = 128000

  # Ids in the Qwen2 tokenizer shared by every Qwen2.5-VL size.
  c.model.image_token_id = 151655
  c.model.video_token_id = 151656
  c.model.vision_start_token_id = 151652
  c.model.vision_end_token_id = 151653

  p = c.processor = ml_collections.ConfigDict()
  p.min_pixels = 56 * 56
  # Qwen's fine-tuning recipe: at most 1280 visual tokens per image (HF inference default is
  # 12845056, i.e. 16384 tokens, far too long a sequence for training).
  p.max_pixels = 28 * 28 * 1280
  p.image_mean = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
  p.image_std = (0.26862954, 0.26130258, 0.27577711)
  # Required for real runs: the checkpoint's tokenizer.json (or its directory), e.g.
  # --config.processor.tokenizer=/path/to/Qwen2.5-VL-7B-Instruct. Anything that tokenizes
  # refuses to run while it is empty.
  p.tokenizer = ""
  p.system_prompt = "You are a helpful assistant."  # "" writes no system turn (Qwen3-VL's default)
  p.box_coordinates = "absolute"  # `coords` grounding: pixels of the resized image (Qwen2.5-VL's convention)

  # Input pipeline (zwz_jax/data/pipeline.py). Record dirs hold a manifest.json and ArrayRecord
  # shards from launch/gen_data.py; set them per run, e.g. --config.data.train="('out/run1',)".
  d = c.data = ml_collections.ConfigDict()
  d.train = ()
  d.eval = ()
  d.grounding = "overlay"  # overlay (red box, the paper's best) | coords (box in the text) | none
  # global: the full image, grounded as above (distillation); regional: the record's region cut out
  # (the teacher's zoomed-in view), e.g. to give a from-scratch student basic perception first.
  d.view = "global"
  d.target = "letter"  # multiple choice: "letter" -> "B", "letter_text" -> "B. blue"
  d.global_batch_size = 64
  # (max_tokens, max_patches), small to large; a batch takes the smallest bucket that fits all of
  # its examples, so jit compiles once per bucket. max_patches counts window-padded patches and
  # must be a multiple of the window ((window_size // patch_size)**2 = 64 patches here). At
  # max_pixels (1280 merged tokens) an image pads to at most 5824 patches for aspect ratios up to
  # 4:1 and 6144 up to 20:1; longer examples are skipped as too_long.
  d.buckets = ((1024, 3072), (1664, 6144))
  # Batches grouped by bucket: up to this many batches' worth of examples per process are held
  # back until one bucket's examples fill a batch (zwz_jax/data/pipeline.py); 1 = stream order.
  # Held examples cost host memory: a few hundred MB each at the paper's largest images.
  d.bucket_lookahead = 4
  d.shuffle_seed = 0  # epoch e is shuffled with shuffle_seed + e
  d.num_workers = 8  # preprocessing processes per host; 0 = in the training process
  d.num_threads = 2  # reader threads per worker (or in the training process when num_workers = 0)
  d.prefetch = 16  # preprocessed examples buffered per worker (or in-process)

  m = c.mesh = ml_collections.ConfigDict()
  m.data = 1
  m.fsdp = -1  # -1: all devices left after the other axes
  # Tensor parallelism must divide num_kv_heads and the vision MLP width (3420 = 4 * 855):
  # at most 2 for 3B, 4 for 7B/32B/72B.
  m.tensor = 1

  # Supervised distillation (SFT) on the records; the paper's RL recipe builds on the same loop.
  tr = c.train = ml_collections.ConfigDict()
  tr.steps = 2000
  tr.learning_rate = 1e-5
  tr.warmup_steps = 100
  tr.end_lr_frac = 0.1  # cosine decay to this fraction of the peak
  tr.weight_decay = 0.0
  tr.b1, tr.b2, tr.eps = 0.9, 0.999, 1e-8
  tr.grad_clip = 1.0  # global norm; 0 disables
  tr.grad_accum_steps = 1  # micro-batches per step (the global batch is split, not repeated)
  tr.z_loss = 0.0
  # Tokens per block of the LM head and loss: (rows, block, vocab) logits are held at a time.
  tr.lm_head_block = 512
  # Learning-rate multiplier per module; 0 freezes it (no update, no optimizer state).
  tr.lr_scale = ml_collections.ConfigDict(dict(vision=1.0, merger=1.0, text=1.0))
  # "" = random init; a HF safetensors folder; a training workdir (its latest parameters, e.g. SFT
  # before RL); or a parameter checkpoint from launch/convert.py.
  tr.init_from = ""
  tr.log_every = 10
  tr.eval_every = 0  # 0 disables; needs data.eval
  tr.checkpoint_every = 200
  tr.keep_checkpoints = 3
  tr.async_checkpoint = True

  c.trainer = "sft"  # launch/train.py runs "sft" (zwz_jax/train/loop.py) or "grpo" (zwz_jax/train/grpo.py)
  # The paper's RL recipe (trainer = "grpo"): data.global_batch_size prompts per step, each sampled
  # num_generations times; binary accuracy reward; group-normalised advantages; token-level clipped
  # policy gradient with asymmetric clipping (DAPO); no KL term. train.steps counts RL steps.
  g = c.grpo = ml_collections.ConfigDict()
  g.num_generations = 8
  g.temperature = 1.0
  g.top_p = 1.0
  g.max_new_tokens = 256
  g.reward_accuracy = 1.0  # weight of the judge's 0/1 verdict
  g.reward_format = 0.0  # weight of a 0/1 reward for an <answer>...</answer> response
  g.overlong_buffer = 0  # DAPO soft overlong penalty over the last this many tokens; 0 = off
  g.overlong_penalty = 1.0  # the penalty at max_new_tokens
  g.advantage_std = True  # (r - mean) / std per group (GRPO); False: r - mean (Dr. GRPO)
  g.clip_low = 0.2
  g.clip_high = 0.28  # DAPO's clip-higher
  g.loss_aggregation = "token"  # "token": mean over all response tokens (DAPO); "sequence": GRPO's
  g.dynamic_sampling = True  # drop groups whose rewards are all equal and sample more prompts
  g.max_sampling_rounds = 3  # rollout rounds per step at most; short batches are padded, masked out
  g.kl_coef = 0.0  # > 0: k3 KL to the frozen initial policy (train.init_from)
  g.ppo_epochs = 1
  g.num_minibatches = 1  # optimizer updates per epoch over the rollout batch
  return c
