"""Evaluation of one or more checkpoints on one or more benchmarks, in one report.

  python launch/eval.py --config=configs/eval_tiny.py --config.eval.benchmarks=zoombench.parquet,vstar_bench \
      --checkpoint=out/train_tiny [--checkpoint=OTHER ...] --out=out/eval

Each benchmark is scored on the full image (global view) and, where it has crops, on the region
crop (regional view). Per checkpoint and benchmark, predictions go to
<out>/<checkpoint>/<benchmark>/predictions.jsonl as they are made: a killed job re-run with the same
arguments continues where it stopped. <out>/report.{json,md,png} compare all, with the paper's
average over benchmarks. With --config.eval.agentic=true the same model also runs as a
thinking-with-images agent (zoom tool, agentic.jsonl beside the predictions, resumable too) and the
report puts its accuracy, turns and time per item beside the single pass.

On a pod slice or GPU cluster, run the same command on every host with --multihost (or
--coordinator_address / --num_processes / --process_id, zwz_jax/distributed.py): the model is
sharded over the whole mesh, each batch's items are split over the hosts, each host writes its
predictions to its own file under --out (a shared file system), and process 0 writes the report.
A killed job, re-run on every host, continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from zwz_jax import distributed
from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag("configs/eval_tiny.py")
flags.DEFINE_multi_string("checkpoint", None, "HF folder, training workdir, parameter checkpoint, or 'init' (the "
                          "untrained student); repeat to compare", required=True)
flags.DEFINE_string("out", None, "predictions and reports (on a file system every process shares)", required=True)
distributed.define_flags()
FLAGS = flags.FLAGS


def checkpoint_name(path: str) -> str:
  from zwz_jax.eval.benchmarks import safe_name
  return safe_name(os.path.basename(os.path.normpath(path))) or "checkpoint"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = CONFIG.value
  if not config.eval.benchmarks:
    raise app.UsageError("set --config.eval.benchmarks to benchmark files or folders, separated by commas")

  distributed.initialize()
  import jax
  if config.eval.agentic and jax.process_count() > 1:
    raise app.UsageError("eval.agentic runs one item at a time in one process; run it without several")
  from zwz_jax.data import processor
  from zwz_jax.eval import agentic, benchmarks, zoombench
  from zwz_jax.generate import sampler
  from zwz_jax.models import registry
  from zwz_jax.params import ParamSpace, load_params
  from zwz_jax.sharding import make_mesh

  suite = benchmarks.load_suite(config.eval.benchmarks, image_root=config.eval.image_root or None)
  if config.eval.max_items:
    suite = [dataclasses.replace(b, items=b.items[:config.eval.max_items]) for b in suite]
  for bench in suite:
    print(f"{bench.name}: {len(bench.items)} items ({bench.kind}, {bench.path})")
  mesh = make_mesh(config.mesh)
  space = ParamSpace(registry.model_config(config.model), mesh, int(config.seed))
  tokenizer = processor.load_tokenizer(config.processor.tokenizer, config)
  reports = {bench.name: {} for bench in suite}
  for path in FLAGS.checkpoint:
    name = checkpoint_name(path)
    params, what = load_params(path, space)
    model = space.model(params)
    print(f"evaluating {what} as {name!r}")
    evaluator = zoombench.DualViewEvaluator(config, model, tokenizer, mesh=mesh,
                                            coverage_layer=config.eval.coverage_layer, heatmaps=config.eval.heatmaps)
    harness = None
    if config.eval.agentic:
      e = config.eval
      fn = agentic.model_generate_fn(model, tokenizer, config,
                                     sampler.SamplingConfig(max_new_tokens=e.agentic_max_new_tokens))
      harness = agentic.AgenticHarness(fn, max_turns=e.agentic_max_turns, upscale=e.agentic_upscale)
    for bench in suite:
      out_dir = os.path.join(FLAGS.out, name, bench.name)
      rep = reports[bench.name][name] = evaluator.run(bench, out_dir)
      if harness is not None:
        summary = agentic.evaluate(harness, bench.items, out_dir=out_dir, progress=True)
        rep["agentic"] = {k: v for k, v in summary.items() if k != "results"}
  if jax.process_index() == 0:
    report = zoombench.suite_report(suite, reports)
    zoombench.write_reports(report, FLAGS.out)
    print(zoombench.markdown(report))

if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
