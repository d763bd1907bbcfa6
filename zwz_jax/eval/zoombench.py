"""Dual-view evaluation (ZoomBench protocol): every item on the full image and on the region crop.

Accuracy per view, per dimension and per answer type; zooming gap = regional - global; the share of
items right on the crop but wrong on the full image; optional attention coverage on the global view.
Predictions are appended per batch to `predictions.jsonl` (fsync'd), so a killed job continues where
it stopped; the report is computed from that file alone, so it can be recomputed and checked by hand.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import time
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from zwz_jax import answers, records
from zwz_jax.config import ConfigError
from zwz_jax.data import batch as batching
from zwz_jax.data import processor as processor_lib
from zwz_jax.eval import authors_judge, jsonl_log
from zwz_jax.eval.benchmarks import Benchmark, EvalItem, safe_name

VIEWS = ("global", "regional")
PROMPTS = ("ours", "raw")  # eval.prompt: our training format, or the benchmark's own query
PREDICTIONS = "predictions.jsonl"
# Text tokens of an eval prompt besides its image tokens (chat template, question, options).
EVAL_TEXT_TOKENS = 256
TOKEN_UNIT = 64  # batch lengths are multiples of this; patch counts of 4 attention windows


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def shape_rung(n: int, unit: int) -> int:
  """The smallest of unit x (1, 2, 3, 4, 6, 8, 12, 16, ...) that holds n. Batch shapes on this
  ladder are at most 1.5x apart, so a benchmark compiles a few programs (minutes each at 7B)
  whatever its image sizes; rounded up to the unit alone, nearly every batch had one of its own."""
  m = max(1, -(-n // unit))
  two = 1 << (m - 1).bit_length()  # the power of two >= m
  three = 3 * two // 4
  return unit * (three if three >= m else two)


def max_shape(config) -> tuple[int, int]:
  """(max_tokens, max_patches) of a prompt of EVAL_TEXT_TOKENS text tokens and one square image at
  processor.max_pixels: the largest batch shape the evaluator rounds up to, and the one
  launch/compile.py compiles and measures."""
  v, p = config.model.vision, config.processor
  factor = int(v.patch_size) * int(v.spatial_merge_size)
  side = int(np.sqrt(int(p.max_pixels)))
  h, w = processor_lib.smart_resize(side, side, factor, int(p.min_pixels), int(p.max_pixels))
  grid = np.array([[1, h // int(v.patch_size), w // int(v.patch_size)]])
  layout = batching.VisionLayout.from_config(config.model)
  merged = int(grid.prod()) // layout.merge_unit
  return (_round_up(merged + EVAL_TEXT_TOKENS, TOKEN_UNIT),
          _round_up(layout.padded_patches(grid), 4 * layout.window_patches))


def batch_shape(tokens: int, patches: int, patch_unit: int, largest: tuple[int, int]) -> tuple[int, int]:
  """(max_tokens, max_patches) of a batch whose longest prompt and largest image need these: the
  ladder's rung (`shape_rung`), but never past `largest` (`max_shape`, what the compile tool
  measured) unless the batch itself needs more."""
  def fit(n, unit, top):
    return min(shape_rung(n, unit), max(top, _round_up(n, unit)))
  return fit(tokens, TOKEN_UNIT, largest[0]), fit(patches, patch_unit, largest[1])


def read_predictions(out_dir: str) -> dict[tuple[str, str], dict]:
  """(item id, view) -> prediction row, over the files of every process that wrote here."""
  out = {}
  for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else ():
    if name.startswith("predictions") and name.endswith(".jsonl"):
      out.update(jsonl_log.read(os.path.join(out_dir, name), key=lambda r: (r["id"], r["view"])))
  return out


def _predictions_file(process_index: int, process_count: int) -> str:
  return PREDICTIONS if process_count == 1 else f"predictions.process{process_index}-of-{process_count}.jsonl"


def coverage_forward(layer: int):
  """The jitted forward coverage is read from: (model, batch, query (B,)) -> decoder layer `layer`'s
  attention probabilities (B, heads, S) for each row's query position. A second prefill, without a
  cache, next to the sampler's; launch/compile.py compiles it as the evaluator runs it."""
  import jax
  return jax.jit(lambda m, b, q: m(**b, attention_layer=layer, attention_query=q)[1]["attention"])


class DualViewEvaluator:
  """Runs a model over both views of a benchmark with the batched KV-cache sampler.

  A batch asks eval.batch_size (item, view)s, rounded up to a multiple of the batch axes
  (`batch.eval_rows`). On several processes (jax.distributed), every process runs the same loop:
  each batch is split over the processes, which prepare their rows, generate together on the mesh
  and write their rows to their own predictions file; the report reads them all. A sampled row
  draws from a key of its own (the seed and its item and view), so answers do not depend on the
  batch, the process or a resume."""

  def __init__(self, config, model, tokenizer, *, mesh=None, coverage_layer: int = -1, heatmaps: int = 0):
    from zwz_jax.generate import sampler  # jax side, imported here so reports need no jax
    self.sampler = sampler
    self.config = config
    self.model = model
    self.generate = sampler.Sampler(model) if model is not None else None
    self.tokenizer = tokenizer
    self.processor = processor_lib.Processor.from_config(config, tokenizer)
    e = config.eval
    im_end = tokenizer.token_to_id(processor_lib.IM_END)
    self.sampling = sampler.SamplingConfig(
        max_new_tokens=e.max_new_tokens, temperature=float(e.temperature), top_p=float(e.top_p), top_k=int(e.top_k),
        presence_penalty=float(e.presence_penalty), stop_ids=(im_end,))
    self.seed = int(e.seed)
    if e.prompt not in PROMPTS:
      raise ConfigError(f"config key eval.prompt={e.prompt!r} is not one of {PROMPTS}")
    self.prompt = e.prompt
    self.authors_judge = bool(e.authors_judge)
    self.authors_mcq = False  # per benchmark, set by `run`
    self.batch_size = int(e.batch_size)  # global, over all processes; at least this many per batch
    self.mesh = mesh
    self.layout = batching.VisionLayout.from_config(config.model)
    self.largest = max_shape(config)
    self._blank = None  # a padding example, for a process with no row to fill
    # The global view as the student was trained to read it: "none" is the ZoomBench protocol (the
    # question alone names the region); "overlay" / "coords" mark the item's box as in training, for
    # benchmarks whose questions refer to the box (our records' held-out split).
    self.grounding = e.grounding
    if self.grounding not in records.GROUNDING_MODES:
      raise ConfigError(f"config key eval.grounding={self.grounding!r} is not one of {records.GROUNDING_MODES}")
    self.coverage_layer = coverage_layer
    self.heatmaps = heatmaps  # heat-map PNGs for the first N global-view items asked (smallest first)
    self.out_dir = ""
    if coverage_layer >= 0:
      self._attention = coverage_forward(coverage_layer)  # one jitted function for every batch

  def _example(self, item: EvalItem, view: str):
    img = records.decode_image(item.image if view == "global" else item.crop,
                               "full image" if view == "global" else "crop image")
    if self.prompt == "raw" and item.raw_prompt:
      text = item.raw_prompt  # the benchmark's own words, options and instruction included
    else:
      text = records.format_question(item.question, item.options)
    if view == "global" and self.grounding != "none":
      if item.bbox is None:
        raise ValueError(f"eval.grounding={self.grounding!r} needs a box and the item has none")
      img, text = records.ground_view(img, text, item.bbox, self.grounding, **self.processor.box_frame(*img.size))
    return img, self.processor([img], text)

  def run(self, bench: Benchmark, out_dir: str, *, progress: bool = True) -> dict:
    """Evaluates every (item, view) of `bench` not yet in `out_dir`'s predictions (the regional view
    only where the benchmark has crops); returns the report."""
    import jax
    import tqdm
    pi, pc = jax.process_index(), jax.process_count()
    # Prompts per batch: eval.batch_size rounded up to the rows the chips decode anyway (one row of
    # its own per chip at least), so a batch smaller than the slice wastes none of them.
    rows = batching.eval_rows(self.mesh, self.batch_size, pc)
    per_process = rows // pc
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir = out_dir
    self.authors_mcq = bench.authors_mcq
    views = VIEWS if bench.dual_view else VIEWS[:1]
    done = read_predictions(out_dir)  # every process reads the same files, so agrees on `todo`
    # Batches of one view: a crop batched with full images would be padded to their tokens and
    # patches (at eval_zoombench's resolution, 16,640 tokens and 65,536 patches for a view a
    # fraction that size).
    # Within a view, items in order of image size, so that a batch holds images of about one size:
    # a batch runs at its largest prompt's shape. The sort is stable and the same on every process.
    todo = [sorted(((it, v) for it in bench.items if (it.id, v) not in done), key=lambda iv: self._patches(*iv))
            for v in views]
    chunks = [t[start:start + rows] for t in todo for start in range(0, len(t), rows)]
    with jsonl_log.Appender(os.path.join(out_dir, _predictions_file(pi, pc))) as log, \
        tqdm.tqdm(total=sum(map(len, todo)), desc=f"{bench.name}", disable=not progress or pi > 0) as bar:
      for chunk in chunks:
        out, ready = [], []
        for item, view in chunk[pi * per_process:(pi + 1) * per_process]:
          error = item.error or (None if view == "global" or item.crop else "no crop image")
          if error is None:
            try:
              ready.append((item, view) + self._example(item, view))
            except ValueError as e:
              error = str(e)
          if error is not None:
            out.append({"id": item.id, "view": view, "prediction": "", "correct": False, "error": error,
                        **_labels(item)})
        out += self._predict(ready, per_process)  # with every process, even with nothing to ask
        log.write(*out)
        bar.update(len(chunk))
    if pc > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"eval {bench.name} written")
    return report(read_predictions(out_dir), bench.items)

  def _predict(self, ready, rows: int) -> list[dict]:
    """Answers of this process's `ready` examples, in a batch of `rows` rows per process."""
    import jax
    exs = [r[3] for r in ready]
    layout = self.layout
    # The shape every process takes: the largest any of them needs, on the ladder of `batch_shape`.
    shape = np.array([max((len(e["input_ids"]) for e in exs), default=0),
                      max((layout.padded_patches(e["grid_thw"]) for e in exs), default=0)], np.int32)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      shape = np.asarray(multihost_utils.process_allgather(shape)).max(axis=0)
    if not shape[0]:
      return []  # no process has a row to ask
    max_tokens, max_patches = batch_shape(int(shape[0]), int(shape[1]), 4 * layout.window_patches, self.largest)
    n = len(exs)
    pad = [exs[-1] if exs else self._blank_example()] * (rows - n)  # fixed batch size: one program per shape
    batch = batching.build_batch(exs + pad, vision_cfg=layout,
                                 image_token_id=self.model.cfg.image_token_id, max_tokens=max_tokens,
                                 max_patches=max_patches, pad_side="left")
    sampled = self.sampling.temperature > 0  # greedy decoding draws nothing: no keys
    if sampled:
      batch["keys"] = self._keys(ready, rows)
    t0 = time.perf_counter()
    with jax.set_mesh(self.mesh):
      inputs = batching.place(self.mesh, batch, (*batching.MODEL_INPUTS, "keys") if sampled else batching.MODEL_INPUTS)
      keys = inputs.pop("keys", None)
      tokens, lengths = self.generate(inputs, self.sampling, keys, to_host=False)
      tokens, lengths = batching.local_rows(tokens), batching.local_rows(lengths)
    latency = (time.perf_counter() - t0) / max(n, 1)
    texts = self.sampler.decode_texts(self.tokenizer, tokens[:n], lengths[:n], self.sampling.stop_ids)
    cover = self._coverage(ready, batch, inputs) if self.coverage_layer >= 0 else [None] * n
    out = []
    for (item, view, img, ex), text, cov in zip(ready, texts, cover):
      verdict = answers.judge(text, item.answer, options=item.options, answer_type=item.answer_type)
      row = {"id": item.id, "view": view, "prediction": text, "parsed": verdict.parsed,
             "correct": bool(verdict.correct), "method": verdict.method, "error": None,
             **_labels(item), "latency_s": latency, "coverage": cov}
      if self.authors_judge:
        row["authors"] = authors_judge.verdict(text, item.answer, mcq=self.authors_mcq)
      out.append(row)
    return out

  def _patches(self, item: EvalItem, view: str) -> int:
    """Window-padded patches of the view's image as the processor resizes it, read from the image
    header (0 where it cannot be read: that row fails in `_example` and is recorded there)."""
    try:
      w, h = (item.width, item.height) if view == "global" else Image.open(io.BytesIO(item.crop)).size
      rw, rh = self.processor.resized_size(w, h)
    except Exception:  # PIL raises many types for bad bytes; smart_resize a ValueError
      return 0
    p = self.processor.patch_size
    return self.layout.padded_patches([[1, rh // p, rw // p]])

  def _blank_example(self):
    if self._blank is None:
      self._blank = self.processor([Image.new("RGB", (56, 56))], "")
    return self._blank

  def _keys(self, ready, rows: int) -> np.ndarray:
    """(rows, 2) uint32 key data: each ready row's key is the seed folded with a digest of its item
    and view, so it draws the same answer in any batch, on any process and after a resume; padding
    rows repeat the last."""
    import jax
    base = jax.random.key(self.seed)
    keys = [jax.random.key_data(jax.random.fold_in(
        base, int.from_bytes(hashlib.sha256(f"{item.id}/{view}".encode()).digest()[:4], "little") & 0x7FFFFFFF))
        for item, view, *_ in ready] or [jax.random.key_data(base)]
    return np.stack([np.asarray(k) for k in keys + keys[-1:] * (rows - len(keys))]).astype(np.uint32)

  def _coverage(self, ready, batch, inputs) -> list[float | None]:
    """Answer-position attention mass inside the ground-truth box (global view with a bbox only)."""
    import jax
    from zwz_jax.eval import coverage as cov_lib
    last = np.full((batch["input_ids"].shape[0],), batch["input_ids"].shape[1] - 1, np.int32)
    with jax.set_mesh(self.mesh):
      last = batching.place(self.mesh, {"last": last}, ("last",))["last"]
      probs = batching.local_rows(self._attention(self.model, inputs, last))
    out = []
    for i, (item, view, img, ex) in enumerate(ready):
      if view != "global" or item.bbox is None:
        out.append(None)
        continue
      attn = cov_lib.answer_attention_to_images(probs[i], batch["input_ids"][i], self.model.cfg.image_token_id)
      merge = self.model.cfg.vision.spatial_merge_size
      boxes = cov_lib.token_boxes(ex["grid_thw"][0], img.size, merge_size=merge)
      out.append(float(cov_lib.coverage(attn, boxes, item.bbox)))
      if self.heatmaps > 0:
        self.heatmaps -= 1
        os.makedirs(os.path.join(self.out_dir, "heatmaps"), exist_ok=True)
        cov_lib.heatmap_png(img, attn, ex["grid_thw"][0], bbox=item.bbox, merge_size=merge,
                            path=os.path.join(self.out_dir, "heatmaps", safe_name(item.id) + ".png"))
    return out


def _labels(item: EvalItem) -> dict:
  """What a prediction row carries of its item for the report's groups."""
  out = {"dimension": item.dimension, "answer_type": item.answer_type}
  if item.dimension_inferred:
    out["dimension_inferred"] = True
  return out


def _authors(rows) -> dict:
  """The authors' rules on the same answers: accepted, and left to their LLM judge (not run here)."""
  right = sum(r.get("authors") is True for r in rows)
  return {"right": right, "undecided": len(rows) - right, "accuracy": right / len(rows) if rows else float("nan")}


def _acc(rows) -> dict:
  n = len(rows)
  right = sum(bool(r["correct"]) for r in rows)
  return {"n": n, "correct": right, "accuracy": right / n if n else float("nan")}


def report(predictions: dict[tuple[str, str], dict], items: Iterable[EvalItem] | None = None) -> dict:
  """All figures from the saved predictions (rows with an error count as wrong and are listed)."""
  ids = [it.id for it in items] if items is not None else sorted({k[0] for k in predictions})
  rows = {v: [predictions[(i, v)] for i in ids if (i, v) in predictions] for v in VIEWS}
  evaluated = {v: [r for r in rows[v] if not r.get("error")] for v in VIEWS}
  inferred = {r["id"] for v in VIEWS for r in rows[v] if r.get("dimension_inferred")}
  out = {"items": len(ids), "views": {v: _acc(evaluated[v]) for v in VIEWS}, "inferred_dimensions": len(inferred),
         "authors_rules": {v: _authors(evaluated[v]) for v in VIEWS if any("authors" in r for r in evaluated[v])},
         "errors": {v: sorted({r["id"]: r["error"] for r in rows[v] if r.get("error")}.items()) for v in VIEWS}}
  for key in ("dimension", "answer_type"):
    groups = collections.defaultdict(lambda: {v: [] for v in VIEWS})
    for v in VIEWS:
      for r in evaluated[v]:
        groups[r.get(key) or "unknown"][v].append(r)
    out[f"by_{key}"] = {g: {v: _acc(rs[v]) for v in VIEWS} for g, rs in sorted(groups.items())}
  both = [i for i in ids if all((i, v) in predictions and not predictions[(i, v)].get("error") for v in VIEWS)]
  crop_only = [i for i in both if predictions[(i, "regional")]["correct"] and not predictions[(i, "global")]["correct"]]
  g, r = out["views"]["global"]["accuracy"], out["views"]["regional"]["accuracy"]
  out["zooming_gap"] = r - g
  out["both_views"] = len(both)
  out["right_on_crop_wrong_on_full"] = len(crop_only) / len(both) if both else float("nan")
  covs = [p["coverage"] for p in evaluated["global"] if p.get("coverage") is not None]
  out["coverage"] = {"mean": float(np.mean(covs)) if covs else float("nan"), "n": len(covs)}
  lat = [p["latency_s"] for v in VIEWS for p in evaluated[v] if p.get("latency_s") is not None]
  out["latency_s_per_item"] = float(np.mean(lat)) if lat else float("nan")
  return out


def _pct(x: float) -> str:
  return "n/a" if x != x else f"{100 * x:.1f}"


def suite_report(benchmarks: Sequence[Benchmark], reports: dict[str, dict[str, dict]]) -> dict:
  """One job's report: per benchmark (what it is, checkpoint -> report), and per checkpoint the
  paper's average, the mean over benchmarks of the global-view accuracy."""
  out = {"benchmarks": {b.name: {"kind": b.kind, "path": b.path, "dual_view": b.dual_view,
                                 "authors_mcq": b.authors_mcq, "checkpoints": reports[b.name]} for b in benchmarks}}
  names = [name for b in benchmarks for name in reports[b.name]]
  out["average"] = {}
  for name in dict.fromkeys(names):
    accs = [reports[b.name][name]["views"]["global"]["accuracy"] for b in benchmarks if name in reports[b.name]]
    out["average"][name] = {"global": float(np.mean(accs)) if accs else float("nan"), "benchmarks": len(accs)}
  return out


def markdown(suite: dict) -> str:
  """The job's report as markdown: global accuracy per benchmark and checkpoint with the average,
  then each benchmark's own tables."""
  benches = suite["benchmarks"]
  lines = []
  if len(benches) > 1:
    lines += ["Global-view accuracy (%) per benchmark; the average weighs each benchmark equally, as the paper's.", "",
              "| checkpoint | " + " | ".join(benches) + " | average |",
              "| --- | " + " | ".join("---" for _ in benches) + " | --- |"]
    for name, avg in suite["average"].items():
      cells = [_pct(b["checkpoints"][name]["views"]["global"]["accuracy"]) if name in b["checkpoints"] else "n/a"
               for b in benches.values()]
      lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(avg['global'])} |")
    lines.append("")
  for bname, b in benches.items():
    n = max((rep["items"] for rep in b["checkpoints"].values()), default=0)
    views = "global and regional views" if b["dual_view"] else "global view only (no crops)"
    lines += [f"## {bname} ({b['kind']}, {n} items, {views})", "", benchmark_markdown(b["checkpoints"])]
  return "\n".join(lines)


def benchmark_markdown(reports: dict[str, dict]) -> str:
  """One benchmark's table comparing checkpoints (name -> report), then per-dimension accuracies."""
  lines = ["| checkpoint | global | regional | zooming gap | crop-only right | coverage | items |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, rep in reports.items():
    lines.append(f"| {name} | {_pct(rep['views']['global']['accuracy'])} | {_pct(rep['views']['regional']['accuracy'])}"
                 f" | {_pct(rep['zooming_gap'])} | {_pct(rep['right_on_crop_wrong_on_full'])}"
                 f" | {_pct(rep['coverage']['mean'])} | {rep['items']} |")
  dims = sorted({d for rep in reports.values() for d in rep["by_dimension"]})
  if dims:
    lines += ["", "| checkpoint | view | " + " | ".join(dims) + " |", "| --- | --- | " + " | ".join("---" for _ in dims) + " |"]
    asked = [v for v in VIEWS if any(rep["views"][v]["n"] for rep in reports.values())] or VIEWS[:1]
    for name, rep in reports.items():
      for v in asked:
        cells = [_pct(rep["by_dimension"].get(d, {}).get(v, {"accuracy": float("nan")})["accuracy"]) for d in dims]
        lines.append(f"| {name} | {v} | " + " | ".join(cells) + " |")
    inferred = max(rep.get("inferred_dimensions", 0) for rep in reports.values())
    if inferred:
      lines += ["", f"Dimensions of {inferred} items are inferred from their questions (the benchmark labels "
                "none; zwz_jax.dimensions.infer_dimension)."]
  judged = {name: rep for name, rep in reports.items() if rep.get("authors_rules")}
  if judged:
    lines += ["", "The authors' rules on the same answers (zwz_jax/eval/authors_judge.py; the undecided go to their "
              "LLM judge, not run here, so their accuracy is at least this):", "",
              "| checkpoint | view | ours | authors' rules | undecided |", "| --- | --- | --- | --- | --- |"]
    for name, rep in judged.items():
      for v, a in rep["authors_rules"].items():
        lines.append(f"| {name} | {v} | {_pct(rep['views'][v]['accuracy'])} | {_pct(a['accuracy'])} | {a['undecided']} |")
  agents = {name: rep for name, rep in reports.items() if "agentic" in rep}
  if agents:
    sec = lambda x: "n/a" if x != x else f"{x:.3f}"
    lines += ["", "| checkpoint | single-pass global | agentic | agentic turns | zoom calls | single-pass s/item"
              " | agentic s/item | agentic / single-pass time |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rep in agents.items():
      a = rep["agentic"]
      lines.append(f"| {name} | {_pct(rep['views']['global']['accuracy'])} | {_pct(a['accuracy'])}"
                   f" | {a['mean_turns']:.2f} | {a['mean_tool_calls']:.2f} | {sec(rep['latency_s_per_item'])}"
                   f" | {sec(a['mean_wall_time_s'])} | {a['mean_wall_time_s'] / rep['latency_s_per_item']:.1f}x |")
  return "\n".join(lines) + "\n"


def bar_chart(suite: dict, path: str, width: int = 640, height: int = 360) -> None:
  """Global vs regional accuracy per benchmark and checkpoint as a PNG (drawn with PIL: no plotting
  dependency)."""
  bars = [(f"{bname}/{name}" if len(suite["benchmarks"]) > 1 else name, rep)
          for bname, b in suite["benchmarks"].items() for name, rep in b["checkpoints"].items()]
  img = Image.new("RGB", (width, height), "white")
  d = ImageDraw.Draw(img)
  base, top, left = height - 40, 20, 50
  d.line((left, top, left, base), fill="black")
  d.line((left, base, width - 10, base), fill="black")
  for y in range(0, 101, 25):
    yy = base - (base - top) * y / 100
    d.text((5, yy - 6), f"{y}%", fill="black")
  slot = (width - left - 20) / max(len(bars), 1)
  colours = {"global": (70, 110, 200), "regional": (230, 140, 40)}
  for i, (label, rep) in enumerate(bars):
    for j, v in enumerate(VIEWS):
      acc = rep["views"][v]["accuracy"]
      acc = 0.0 if acc != acc else acc
      x0 = left + 10 + i * slot + j * slot * 0.4
      d.rectangle((x0, base - (base - top) * acc, x0 + slot * 0.35, base), fill=colours[v])
    d.text((left + 10 + i * slot, base + 8), label[:24], fill="black")
  for j, v in enumerate(VIEWS):
    d.rectangle((width - 150, top + 16 * j, width - 140, top + 16 * j + 10), fill=colours[v])
    d.text((width - 135, top + 16 * j - 2), v, fill="black")
  img.save(path)


def write_reports(suite: dict, out_dir: str) -> None:
  """<out_dir>/report.json (the suite report), report.md and report.png."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(suite, f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(suite))
  bar_chart(suite, os.path.join(out_dir, "report.png"))
