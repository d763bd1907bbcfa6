"""The whole method on one CPU: zoom in, distill, train on full images, watch the zooming gap close.

  python launch/demo.py [--config=configs/demo.py] [--config.grpo.steps=20] [--config.out_dir=DIR]

Stages, each one of our launchers in its own process (re-running the demo resumes every stage):
  1. data      procedural high-resolution scenes; the scene teacher zooms into each object's region,
               writes questions and verified answers (launch/gen_data.py), for training and for a
               held-out dual-view benchmark on other scenes;
  2. perception  the from-scratch student learns to read objects on the cut-out regions: it now
               answers the zoomed-in view, not the full image (the base a real run starts from);
  3. distill   region-to-image distillation: the same records on the full image, red box drawn;
  4. control   the same distillation without the box;
  5. grpo      (optional) GRPO from the distilled student;
  6. eval      the dual-view protocol on the held-out items for the untrained student and every stage
               (launch/eval.py: global and regional accuracy, zooming gap, per dimension, PNG chart).
Then <out_dir>/demo.md (and the console) compares them, beside the answer prior: the accuracy of
always giving a dimension's most frequent training answer, what a student blind to the image gets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app

from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag("configs/demo.py")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INIT = "init"  # launch/eval.py's name for the untrained student (zwz_jax.params.INIT)
LABELS = {  # eval checkpoint name -> what the demo calls it
    INIT: "untrained student",
    "perception": "before distillation (perception on crops only)",
    "distill_box": "region-to-image distillation (red box)",
    "distill_no_box": "control: same distillation, no box",
    "grpo_box": "distillation + GRPO",
}


class Stage:
  """Runs one launcher as a child process and times it; a failure stops the demo naming the stage."""

  def __init__(self, total: int):
    self.total, self.done, self.times = total, 0, {}

  def __call__(self, name: str, script: str, args: list[str]) -> None:
    self.done += 1
    print(f"\n=== [{self.done}/{self.total}] {name} ===", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, os.path.join(ROOT, "launch", script), *args], cwd=ROOT)
    if rc:
      raise SystemExit(f"demo stage {name!r} failed (launch/{script} exited {rc}); fix and re-run to resume")
    self.times[name] = time.perf_counter() - t0


def summary(cfg, reports: dict, prior: float, times: dict) -> str:
  from zwz_jax.eval import zoombench
  pct = lambda x: f"{100 * x:.1f}%"
  g = {name: rep["views"]["global"]["accuracy"] for name, rep in reports.items()}
  lines = ["# zwz-jax demo: region-to-image distillation on one CPU", "",
           f"Held-out: {next(iter(reports.values()))['items']} items from {cfg.test_images} unseen scenes "
           f"(scene seed {cfg.test_seed}); training: {cfg.train_images} scenes.", "",
           "| student | global | regional | zooming gap |", "| --- | --- | --- | --- |"]
  for name, rep in reports.items():
    lines.append(f"| {LABELS.get(name, name)} | {pct(g[name])} | {pct(rep['views']['regional']['accuracy'])}"
                 f" | {100 * rep['zooming_gap']:+.1f} |")
  lines += ["", f"Answer prior (each dimension's most frequent training answer, blind to the image): "
            f"{pct(prior)}.", ""]
  if "perception" in g and "distill_box" in g:
    lines.append(f"Global view: {pct(g['perception'])} before distillation -> {pct(g['distill_box'])} after "
                 f"(untrained {pct(g.get(INIT, float('nan')))}, answer prior {pct(prior)})."
                 + (f" Without the box: {pct(g['distill_no_box'])}." if "distill_no_box" in g else ""))
  lines += ["", "Per checkpoint and dimension (launch/eval.py's report, chart in eval/report.png):", "",
            zoombench.benchmark_markdown(reports),
            "Stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()), ""]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; the demo takes --config and --config.KEY=VALUE")
  cfg = CONFIG.value
  out = cfg.out_dir
  train_dir, test_dir = os.path.join(out, "data", "train"), os.path.join(out, "data", "test")
  run_dir = lambda name: os.path.join(out, "runs", name)
  stage = Stage(total=5 + bool(cfg.control) + (cfg.grpo.steps > 0))
  t0 = time.perf_counter()

  gen = [f"--config={cfg.datagen}"]
  stage("data: training scenes", "gen_data.py",
        gen + [f"--config.out_dir={train_dir}", f"--config.scenes.num_images={cfg.train_images}"])
  stage("data: held-out scenes", "gen_data.py",
        gen + [f"--config.out_dir={test_dir}", f"--config.scenes.num_images={cfg.test_images}",
               f"--config.scenes.seed={cfg.test_seed}", "--config.split=test"])

  def train(name, steps, lr, *extra):
    stage(name, "train.py", [f"--config={cfg.student}", f"--workdir={run_dir(name)}",
                             f"--config.data.train=('{train_dir}',)", f"--config.train.steps={steps}",
                             f"--config.train.learning_rate={lr}", f"--config.train.log_every={max(1, steps // 6)}",
                             f"--config.train.checkpoint_every={max(1, steps // 3)}", *extra])

  train("perception", cfg.perception.steps, cfg.perception.learning_rate, "--config.data.view=regional")
  train("distill_box", cfg.distill.steps, cfg.distill.learning_rate, "--config.data.grounding=overlay",
        f"--config.train.init_from={run_dir('perception')}")
  checkpoints = [INIT, run_dir("perception"), run_dir("distill_box")]
  if cfg.control:
    train("distill_no_box", cfg.distill.steps, cfg.distill.learning_rate, "--config.data.grounding=none",
          f"--config.train.init_from={run_dir('perception')}")
    checkpoints.append(run_dir("distill_no_box"))
  if cfg.grpo.steps > 0:
    train("grpo_box", cfg.grpo.steps, cfg.grpo.learning_rate, "--config.trainer=grpo",
          "--config.data.grounding=overlay", f"--config.train.init_from={run_dir('distill_box')}",
          f"--config.grpo.num_generations={cfg.grpo.num_generations}", "--config.grpo.num_minibatches=2",
          "--config.train.warmup_steps=0")
    checkpoints.append(run_dir("grpo_box"))

  eval_dir = os.path.join(out, "eval")
  stage("dual-view evaluation", "eval.py",
        [f"--config={cfg.student}", f"--config.eval.benchmarks={test_dir}", f"--config.eval.max_items={cfg.eval_items}",
         *[f"--checkpoint={c}" for c in checkpoints], f"--out={eval_dir}"])

  from zwz_jax.eval import benchmarks
  with open(os.path.join(eval_dir, "report.json")) as f:
    reports = json.load(f)
  reports = reports["benchmarks"]["test"]["checkpoints"]
  reports = {name: reports[name] for name in [os.path.basename(c) for c in checkpoints]}
  items = benchmarks.load(test_dir).items[:cfg.eval_items]
  prior = benchmarks.answer_prior(train_dir, items)
  text = summary(cfg, reports, prior, stage.times)
  with open(os.path.join(out, "demo.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out, "demo.json"), "w") as f:
    json.dump({"answer_prior": prior, "stage_seconds": stage.times,
               "global": {n: r["views"]["global"]["accuracy"] for n, r in reports.items()},
               "regional": {n: r["views"]["regional"]["accuracy"] for n, r in reports.items()},
               "zooming_gap": {n: r["zooming_gap"] for n, r in reports.items()}}, f, indent=2, sort_keys=True)
  print("\n" + text)
  print(f"demo done in {(time.perf_counter() - t0) / 60:.1f} min: {out}/demo.md, {eval_dir}/report.png")


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
