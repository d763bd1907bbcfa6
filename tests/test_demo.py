"""`make demo` shortened: every stage runs and leaves artefacts that decode."""
import json
import os
import subprocess
import sys

from PIL import Image

from tests.shared import LAUNCH
from zwz_jax import records

STAGES = ("init", "perception", "distill_box", "distill_no_box", "grpo_box")


def test_shortened_demo_writes_every_artefact(tmp_path):
  out = tmp_path / "demo"
  args = [f"--config.out_dir={out}", "--config.train_images=3", "--config.test_images=2", "--config.eval_items=4",
          "--config.perception.steps=2", "--config.distill.steps=2", "--config.grpo.steps=1"]
  r = subprocess.run([sys.executable, f"{LAUNCH}/demo.py", *args], capture_output=True, text=True,
                     env={**os.environ, "TQDM_DISABLE": "1"}, check=False)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]

  for split, n in (("train", 3), ("test", 2)):
    manifest = records.read_manifest(str(out / "data" / split))
    assert manifest["num_images"] == n and manifest["num_records"] > 0
    assert manifest["config"]["split"] == split and manifest["config"]["mc"]["num_options"] == 0
  assert manifest["config"]["scenes"]["seed"] == 1000  # held-out scenes differ from the training ones

  for name in STAGES[1:]:
    steps = os.listdir(out / "runs" / name / "checkpoints")
    assert any(s.isdigit() and int(s) >= 1 for s in steps), (name, steps)

  report = json.load(open(out / "eval" / "report.json"))["benchmarks"]["test"]["checkpoints"]
  assert set(report) == set(STAGES)
  for name in STAGES:
    rows = [json.loads(line) for line in open(out / "eval" / name / "test" / "predictions.jsonl")]
    assert len(rows) == 2 * report[name]["items"] and {r["view"] for r in rows} == {"global", "regional"}
    assert 0.0 <= report[name]["views"]["global"]["accuracy"] <= 1.0
  with Image.open(out / "eval" / "report.png") as im:
    im.load()
    assert im.size[0] > 100 and im.size[1] > 100
  assert "| checkpoint | global | regional |" in (out / "eval" / "report.md").read_text()

  text = (out / "demo.md").read_text()
  assert "region-to-image distillation (red box)" in text and "Answer prior" in text
  summary = json.load(open(out / "demo.json"))
  assert set(summary["global"]) == set(STAGES) and 0.0 <= summary["answer_prior"] <= 1.0
  assert text in r.stdout  # the demo prints what it writes


def test_demo_rejects_unknown_config_key():
  out = subprocess.run([sys.executable, f"{LAUNCH}/demo.py", "--config.distill.stepz=3"],
                       capture_output=True, text=True, check=False)
  assert out.returncode != 0
  assert "unknown config key 'distill.stepz'" in out.stderr
