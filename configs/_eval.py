"""The `eval` section shared by evaluation configs (added to a student config)."""
import ml_collections


def add_eval(c, *, benchmarks="", batch_size=8, max_new_tokens=16):
  e = c.eval = ml_collections.ConfigDict()
  # Comma-separated benchmark files or folders, each read by its form (zwz_jax/eval/benchmarks.load):
  # ZoomBench parquet, V* folder, HR-Bench .tsv/.parquet, MME-RealWorld .json, the authors' JSON/JSONL
  # (images under image_root, default the file's folder), or a directory of our records.
  e.benchmarks = benchmarks
  e.image_root = ""
  e.batch_size = batch_size  # prompts per batch, rounded up to a multiple of the batch axes data x fsdp
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
  # presence_penalty 1.5, seed 42). Each sampled row draws from fold_in(seed, its item and view).
  e.temperature = 0.0
  e.top_p = 1.0
  e.top_k = 0
  e.presence_penalty = 0.0
  e.seed = 0
  # Also read every answer with the authors' rules (zwz_jax/eval/authors_judge.py; needs mathruler),
  # reported beside ours; their first-letter step applies to the benchmarks on their MCQ list (V*,
  # HR-Bench, MME-RealWorld; not ZoomBench).
  e.authors_judge = False
  # The thinking-with-images baseline on the global view, same model and sampler, beside the single
  # pass: the model may call the zoom tool up to agentic_max_turns times (batch of 1 per item).
  e.agentic = False
  e.agentic_max_turns = 3
  e.agentic_max_new_tokens = 64  # per turn: room to reason and emit a tool call
  e.agentic_upscale = 2.0
  return c


# The ZwZ authors' evaluation (inclusionAI/Zooming-without-Zooming, mm-eval/infer_without_tool.py):
# this system prompt, the benchmark's own query after the image, images between 65,536 and
# 16,777,216 pixels, vLLM sampling at temperature 0.7, top_p 0.8, top_k 20, presence_penalty 1.5,
# seed 42, up to 8,192 new tokens, one sample per question.
PAPER_SYSTEM_PROMPT = (
    "You are a helpful assistant.\n The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The answer are enclosed within <answer> </answer> tags, respectively, "
    "i.e., reasoning process here <answer> answer here </answer>")


def add_paper_protocol(c, *, batch_size):
  """The eval section, set to the authors' protocol (the judge reads their <answer> tags)."""
  add_eval(c, batch_size=batch_size, max_new_tokens=8192)
  c.processor.system_prompt = PAPER_SYSTEM_PROMPT
  c.processor.min_pixels = 65536
  c.processor.max_pixels = 16777216
  e = c.eval
  e.prompt = "raw"
  e.temperature, e.top_p, e.top_k, e.presence_penalty, e.seed = 0.7, 0.8, 20, 1.5, 42
  return c

