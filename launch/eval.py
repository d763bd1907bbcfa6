"""Dual-view (global / regional) evaluation of one or more checkpoints, in one report.

  python launch/eval.py --config=configs/eval_tiny.py --config.eval.benchmark=bench.parquet \
      --checkpoint=out/train_tiny [--checkpoint=OTHER ...] --out=out/eval

Per checkpoint, predictions go to <out>/<name>/predictions.jsonl as they are made: a killed job
re-run with the same arguments continues where it stopped. <out>/report.{json,md,png} compare all.
With --config.eval.agentic=true the same model also runs as a thinking-with-images agent (zoom tool,
<out>/<name>/agentic.jsonl, resumable too) and the report puts its accuracy, turns and time per item
beside the single pass.
"""
from __future__ import annotations

import os
import re

from absl import app, flags

from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag("configs/eval_tiny.py")
flags.DEFINE_multi_string("checkpoint", None, "HF folder, training workdir, parameter checkpoint, or 'init' (the "
                          "untrained student); repeat to compare", required=True)
flags.DEFINE_string("out", None, "predictions and reports", required=True)
FLAGS = flags.FLAGS


def checkpoint_name(path: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(path))) or "checkpoint"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = CONFIG.value
  if not config.eval.benchmark:
    raise app.UsageError("set --config.eval.benchmark to a benchmark parquet/JSON file or a record directory")

  from zwz_jax.data import processor
  from zwz_jax.eval import agentic, benchmarks, zoombench
  from zwz_jax.generate import sampler
  from zwz_jax.models import registry
  from zwz_jax.params import ParamSpace, load_params
  from zwz_jax.sharding import make_mesh

  items = benchmarks.load(config.eval.benchmark, image_root=config.eval.image_root)
  if config.eval.max_items:
    items = items[:config.eval.max_items]
  print(f"{len(items)} items from {config.eval.benchmark}")
  space = ParamSpace(registry.model_config(config.model), make_mesh(config.mesh), int(config.seed))
  tokenizer = processor.load_tokenizer(config.processor.tokenizer, config)
  reports = {}
  for path in FLAGS.checkpoint:
    name = checkpoint_name(path)
    params, what = load_params(path, space)
    model = space.model(params)
    print(f"evaluating {what} as {name!r}")
    evaluator = zoombench.DualViewEvaluator(config, model, tokenizer, coverage_layer=config.eval.coverage_layer,
                                            heatmaps=config.eval.heatmaps)
    reports[name] = evaluator.run(items, os.path.join(FLAGS.out, name))
    if config.eval.agentic:
      e = config.eval
      fn = agentic.model_generate_fn(model, tokenizer, config,
                                     sampler.SamplingConfig(max_new_tokens=e.agentic_max_new_tokens))
      harness = agentic.AgenticHarness(fn, max_turns=e.agentic_max_turns, upscale=e.agentic_upscale)
      summary = agentic.evaluate(harness, items, out_dir=os.path.join(FLAGS.out, name), progress=True)
      reports[name]["agentic"] = {k: v for k, v in summary.items() if k != "results"}
  zoombench.write_reports(reports, FLAGS.out)
  print(zoombench.markdown(reports))


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
