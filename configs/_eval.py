"""The `eval` section shared by evaluation configs (added to a student config)."""
import ml_collections


def add_eval(c, *, benchmark="", batch_size=8, max_new_tokens=16):
  e = c.eval = ml_collections.ConfigDict()
  # A ZoomBench-style parquet, a JSON/JSONL file in the original release format (images relative to
  # image_root), or a directory of our records.
  e.benchmark = benchmark
  e.image_root = ""
  e.batch_size = batch_size
  e.max_new_tokens = max_new_tokens
  e.coverage_layer = -1  # decoder layer whose answer-position attention gives coverage; -1 = off
  e.heatmaps = 8  # attention heat-map PNGs (image, attention, box) for this many items
  e.max_items = 0  # 0 = all
  # Global view: "none" (ZoomBench: the question names the region), or "overlay" / "coords" to mark
  # the item's box as in training (for benchmarks whose questions say "in the red box").
  e.grounding = "none"
  # The text of each question: "ours" (the bare question, lettered options and our answer
  # instruction, as the student is trained) or "raw" (the benchmark's own query, as the ZwZ authors
  # evaluate).
  e.prompt = "ours"
  # Decoding: greedy by default; the authors sample (temperature 0.7, top_p 0.8, top_k 20,
  # presence_penalty 1.5, seed 42). A sampled batch draws from fold_in(seed, its item ids and views).
  e.temperature = 0.0
  e.top_p = 1.0
  e.top_k = 0
  e.presence_penalty = 0.0
  e.seed = 0
  # The thinking-with-images baseline on the global view, same model and sampler, beside the single
  # pass: the model may call the zoom tool up to agentic_max_turns times (batch of 1 per item).
  e.agentic = False
  e.agentic_max_turns = 3
  e.agentic_max_new_tokens = 64  # per turn: room to reason and emit a tool call
  e.agentic_upscale = 2.0
  return c
