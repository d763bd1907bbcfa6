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

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zwz_jax.config import load_config, parse_argv  # noqa: E402


def checkpoint_name(path: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(path))) or "checkpoint"


def main(argv):
  config_path, overrides, rest = parse_argv(argv, default_config="configs/eval_tiny.py")
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", action="append", required=True,
                      help="HF folder, training workdir, parameter checkpoint, or 'init' (the untrained "
                           "student); repeat to compare")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(rest)
  config = load_config(config_path, overrides)
  if not config.eval.benchmark:
    raise SystemExit("set --config.eval.benchmark to a benchmark parquet/JSON file or a record directory")

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
  for path in args.checkpoint:
    name = checkpoint_name(path)
    params, what = load_params(path, space)
    model = space.model(params)
    print(f"evaluating {what} as {name!r}")
    evaluator = zoombench.DualViewEvaluator(config, model, tokenizer, coverage_layer=config.eval.coverage_layer,
                                            heatmaps=config.eval.heatmaps)
    reports[name] = evaluator.run(items, os.path.join(args.out, name))
    if config.eval.agentic:
      e = config.eval
      fn = agentic.model_generate_fn(model, tokenizer, config,
                                     sampler.SamplingConfig(max_new_tokens=e.agentic_max_new_tokens))
      harness = agentic.AgenticHarness(fn, max_turns=e.agentic_max_turns, upscale=e.agentic_upscale)
      summary = agentic.evaluate(harness, items, out_dir=os.path.join(args.out, name), progress=True)
      reports[name]["agentic"] = {k: v for k, v in summary.items() if k != "results"}
  zoombench.write_reports(reports, args.out)
  print(zoombench.markdown(reports))


if __name__ == "__main__":
  main(sys.argv[1:])
