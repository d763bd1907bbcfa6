"""Dual-view evaluation: report figures equal hand computation, resume after kill -9, bad items."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import hf_reference as ref
from tests import record_fixtures
from tests.shared import CONFIGS, KILL_AT, LAUNCH, free_port, shared_dir
from zwz_jax import records
from zwz_jax.config import load_config
from zwz_jax.eval import benchmarks, zoombench
from zwz_jax.models.qwen2_5_vl import ModelConfig


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  """A small generated benchmark in the ZoomBench parquet schema, plus a tiny HF checkpoint."""
  def build(root):
    root = pathlib.Path(root)
    record_fixtures.write_records(str(root / "records"), 10, seed=5, sizes=(150, 300))
    items = benchmarks.from_records(str(root / "records"))
    items[1] = dataclasses.replace(items[1], crop=None)  # missing crop image
    items[2] = dataclasses.replace(items[2], image=b"not an image")  # unreadable full image
    benchmarks.write_zoombench_parquet(items, str(root / "bench.parquet"))
    record_fixtures.write_vstar(root / "vstar", size=(120, 90))
    record_fixtures.write_hrbench(root / "hr_bench_4k.tsv", size=(160, 100))
    config = load_config(f"{CONFIGS}/eval_tiny.py")
    ref.hf_model(ModelConfig.from_config(config.model), seed=2).save_pretrained(root / "ckpt")
  return pathlib.Path(shared_dir(tmp_path_factory, "zoombench_bench", build))


SUITE = ("bench.parquet", "vstar", "hr_bench_4k.tsv")  # ZoomBench, V*, HR-Bench


def _eval(bench, out, *extra, kill_at="", suite=SUITE):
  """The authors' protocol (sampled) on the tiny student over a mixed ZoomBench + V* + HR-Bench suite."""
  harness = [f"{KILL_AT}", kill_at] if kill_at else []  # a SIGKILL at that point
  return subprocess.run([sys.executable, *harness, f"{LAUNCH}/eval.py", f"--config={CONFIGS}/eval_paper_tiny.py",
                         f"--config.eval.benchmarks={','.join(str(bench / b) for b in suite)}",
                         "--config.eval.coverage_layer=1", "--config.eval.authors_judge=true",
                         f"--checkpoint={bench / 'ckpt'}", f"--out={out}", *extra],
                        capture_output=True, text=True, check=False, env={**os.environ, "TQDM_DISABLE": "1"})


@pytest.fixture(scope="module")
def reference(bench, tmp_path_factory):
  def build(out):
    proc = _eval(bench, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
  return pathlib.Path(shared_dir(tmp_path_factory, "zoombench_reference", build))


def _rows(out, bench="bench"):
  """The prediction rows of every process's file."""
  return [json.loads(l) for f in sorted((out / "ckpt" / bench).glob("predictions*.jsonl")) for l in open(f)]


@pytest.mark.xdist_group("zoombench_reference")  # shares the fixture run: one worker
def test_report_equals_hand_computation(reference):
  rows = _rows(reference)
  assert len(rows) == 20 and len({(r["id"], r["view"]) for r in rows}) == 20
  ok = {v: [r for r in rows if r["view"] == v and not r["error"]] for v in zoombench.VIEWS}
  acc = {v: sum(r["correct"] for r in ok[v]) / len(ok[v]) for v in ok}
  by_id = {(r["id"], r["view"]): r for r in rows}
  both = [i for i in {r["id"] for r in rows} if all(not by_id[(i, v)]["error"] for v in zoombench.VIEWS)]
  crop_only = sum(by_id[(i, "regional")]["correct"] and not by_id[(i, "global")]["correct"] for i in both)
  covs = [r["coverage"] for r in ok["global"] if r["coverage"] is not None]
  suite = json.load(open(reference / "report.json"))
  report = suite["benchmarks"]["bench"]["checkpoints"]["ckpt"]
  assert report["views"]["global"]["accuracy"] == pytest.approx(acc["global"])
  assert report["views"]["regional"]["accuracy"] == pytest.approx(acc["regional"])
  assert report["zooming_gap"] == pytest.approx(acc["regional"] - acc["global"])
  assert report["right_on_crop_wrong_on_full"] == pytest.approx(crop_only / len(both))
  assert report["coverage"]["n"] == len(covs) == len(ok["global"])
  assert report["coverage"]["mean"] == pytest.approx(np.mean(covs)) and 0 <= np.mean(covs) <= 1
  for v in zoombench.VIEWS:  # the authors' rules read the same answers
    assert all(r["authors"] in (True, None) for r in ok[v])
    assert report["authors_rules"][v]["right"] == sum(r["authors"] is True for r in ok[v])
  # V* and HR-Bench have no crops: only their global view is asked, and their whole item lists are.
  globals_ = {}
  for name, n, good in (("vstar", 6, 3), ("hr_bench_4k", 4, 2)):
    b = suite["benchmarks"][name]
    assert (b["dual_view"], b["authors_mcq"]) == (False, True)
    rows = _rows(reference, name)
    assert len(rows) == n and {r["view"] for r in rows} == {"global"}
    assert sum(not r["error"] for r in rows) == good
    rep = b["checkpoints"]["ckpt"]
    assert rep["views"]["global"]["n"] == good and rep["views"]["regional"]["n"] == 0
    globals_[name] = sum(r["correct"] for r in rows if not r["error"]) / good
  globals_["bench"] = acc["global"]
  assert suite["average"]["ckpt"] == {"global": pytest.approx(np.mean(list(globals_.values()))), "benchmarks": 3}
  md = (reference / "report.md").read_text()
  assert md.startswith("Global-view accuracy (%) per benchmark")
  assert "| checkpoint | bench | vstar | hr_bench_4k | average |" in md
  assert "## vstar (vstar, 6 items, global view only (no crops))" in md
  assert "## bench (zoombench, 10 items, global and regional views)" in md
  assert (reference / "report.png").exists()
  assert len(list((reference / "ckpt" / "bench" / "heatmaps").glob("*.png"))) == 8


@pytest.mark.xdist_group("zoombench_reference")  # shares the fixture run: one worker
def test_bad_items_are_recorded_not_fatal(reference):
  rows = {(r["id"], r["view"]): r for r in _rows(reference)}
  errors = {k: r["error"] for k, r in rows.items() if r["error"]}
  # Item 1 lost its crop: only its regional view fails. Item 2's full image is unreadable: the
  # loader marks the item bad, so both of its views are recorded as errors.
  assert sorted(v for _, v in errors) == ["global", "regional", "regional"]
  assert sum("no crop image" in e for e in errors.values()) == 1
  assert sum("does not decode" in e for e in errors.values()) == 2
  report = json.load(open(reference / "report.json"))["benchmarks"]["bench"]["checkpoints"]["ckpt"]
  assert report["views"]["global"]["n"] == 9 and report["views"]["regional"]["n"] == 8
  assert len(report["errors"]["regional"]) == 2


@pytest.mark.xdist_group("zoombench_reference")  # shares the fixture run: one worker
def test_views_are_batched_apart(reference):
  """Batches hold one view, so none pads a crop to a full image's tokens and patches: every
  global view is written before any regional one, even where a batch's error rows (a missing crop)
  are written before its answers."""
  views = [r["view"] for r in _rows(reference)]
  assert set(views) == set(zoombench.VIEWS)
  assert views == sorted(views, key=zoombench.VIEWS.index)


@pytest.mark.xdist_group("zoombench_reference")  # shares the fixture run: one worker
def test_resume_after_kill_gives_the_same_report(bench, reference, tmp_path):
  """Killed in the first benchmark, re-run: the same sampled answers and the same report."""
  killed = _eval(bench, tmp_path, kill_at="eval_batches=2")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  # eval.batch_size=4 on 8 devices asks 8 prompts a batch: the global view's 10 items in 8 + 2.
  assert len(_rows(tmp_path)) == 10
  resumed = _eval(bench, tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  for name in ("bench", "vstar", "hr_bench_4k"):
    key = lambda r: (r["id"], r["view"])
    strip = lambda rows: sorted(({k: v for k, v in r.items() if k != "latency_s"} for r in rows), key=key)
    assert strip(_rows(tmp_path, name)) == strip(_rows(reference, name))
  latency = lambda suite: {b: {k: v for k, v in r["checkpoints"]["ckpt"].items() if k != "latency_s_per_item"}
                           for b, r in suite["benchmarks"].items()}
  assert latency(json.load(open(tmp_path / "report.json"))) == latency(json.load(open(reference / "report.json")))


@pytest.mark.xdist_group("zoombench_reference")  # shares the fixture run: one worker
def test_two_processes_give_the_one_process_report(bench, reference, tmp_path):
  """Two JAX processes (4 CPU devices each, gloo on loopback) split each batch of 8 and write a file
  each; killed mid-way (one process SIGKILLed, the other stopped) and re-run, they give the
  predictions and report of the uninterrupted single process (eval.batch_size=4, asked 8 at a time
  on its 8 devices)."""
  def launch(kill_at=""):
    port = free_port()
    harness = lambda i: [f"{KILL_AT}", kill_at] if kill_at and i == 1 else []
    return [subprocess.Popen(
        [sys.executable, *harness(i), f"{LAUNCH}/eval.py", f"--config={CONFIGS}/eval_paper_tiny.py",
         f"--config.eval.benchmarks={','.join(str(bench / b) for b in SUITE)}", "--config.eval.coverage_layer=1",
         "--config.eval.authors_judge=true", "--config.eval.batch_size=8", f"--checkpoint={bench / 'ckpt'}",
         f"--out={tmp_path}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         "--cpu_collectives=gloo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TQDM_DISABLE": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
        for i in range(2)]

  first, second = launch(kill_at="eval_batches=1")
  second.communicate(timeout=600)
  assert second.returncode == -signal.SIGKILL
  first.kill()  # its partner is gone: it would wait in the next collective
  first.communicate(timeout=60)
  files = sorted(p.name for p in (tmp_path / "ckpt" / "bench").glob("predictions*.jsonl"))
  assert files == ["predictions.process0-of-2.jsonl", "predictions.process1-of-2.jsonl"]
  assert 0 < len(_rows(tmp_path)) < 20
  procs = launch()
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  key = lambda r: (r["id"], r["view"])
  same = lambda rows: sorted(((key(r), r["prediction"], r["correct"], r["error"], r.get("authors")) for r in rows))
  for name in ("bench", "vstar", "hr_bench_4k"):
    got = _rows(tmp_path, name)
    assert len({key(r) for r in got}) == len(got) == len(_rows(reference, name))  # nothing lost or twice
    assert same(got) == same(_rows(reference, name))
    covs = {key(r): r.get("coverage") for r in got}
    for r in _rows(reference, name):
      want = r.get("coverage")
      assert covs[key(r)] == (None if want is None else pytest.approx(want, rel=1e-4, abs=1e-6))
  ours, theirs = (json.load(open(d / "report.json")) for d in (tmp_path, reference))
  assert ours["average"] == theirs["average"]
  assert ({b: r["checkpoints"]["ckpt"]["views"] for b, r in ours["benchmarks"].items()}
          == {b: r["checkpoints"]["ckpt"]["views"] for b, r in theirs["benchmarks"].items()})


def test_shape_rungs_hold_their_length_at_most_half_again():
  for unit in (64, 256):
    rungs = {}
    for n in range(1, 200 * unit, 7):
      r = zoombench.shape_rung(n, unit)
      assert r >= n and r % unit == 0 and r <= 1.5 * -(-n // unit) * unit
      rungs[r] = True
    assert sorted(rungs)[:8] == [unit * m for m in (1, 2, 3, 4, 6, 8, 12, 16)] and len(rungs) == 16


def test_batches_hold_images_of_about_one_size_on_a_ladder_of_shapes(tmp_path, monkeypatch):
  """Each view's items are asked in order of image size, and every batch takes a shape of the
  ladder, never past the config's largest (the one launch/compile.py measures), so a benchmark
  compiles a few programs whatever its image sizes; the answers are those of each item asked alone."""
  import jax
  from zwz_jax.data import batch as batching
  from zwz_jax.data import processor
  from zwz_jax.models import registry
  from zwz_jax.params import ParamSpace
  from zwz_jax.sharding import make_mesh
  rng = np.random.default_rng(3)
  sizes = [(210, 200), (40, 36), (120, 150), (224, 224), (60, 90), (30, 30), (180, 100), (90, 60)]
  crop = lambda img: img.resize((max(28, img.width * 4 // 5), max(28, img.height * 4 // 5)))
  items = [benchmarks._make_item(
      id=f"q{i}", source=f"t:{i}", prompt="What color is the box? Answer with one word.", answer="red",
      image=records.encode_image(img), crop=records.encode_image(crop(img)))
      for i, img in enumerate(ref.images(rng, sizes))]
  bench = benchmarks.Benchmark(name="sizes", kind="zoombench", path="", items=items)
  config = load_config(f"{CONFIGS}/eval_tiny.py")
  tok = processor.load_tokenizer("", config)
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  space = ParamSpace(registry.model_config(config.model), mesh, seed=0)
  model = space.model(space.init())
  shapes, build = [], batching.build_batch
  layout = batching.VisionLayout.from_config(config.model)

  def spy(examples, **kw):
    shapes.append((kw["max_tokens"], kw["max_patches"], [layout.padded_patches(e["grid_thw"]) for e in examples]))
    return build(examples, **kw)

  monkeypatch.setattr(batching, "build_batch", spy)
  from flax import nnx
  splits, split = [], nnx.split
  monkeypatch.setattr(nnx, "split", lambda *a: splits.append(a[0] is model) or split(*a))
  answers = {}
  for size in (4, 1):
    config.eval.batch_size = size
    evaluator = zoombench.DualViewEvaluator(config, model, tok, mesh=mesh)
    splits.clear()
    evaluator.run(bench, str(tmp_path / str(size)), progress=False)
    assert not any(splits)  # the evaluator's sampler holds the model split once, not per batch
    answers[size] = {k: r["prediction"] for k, r in zoombench.read_predictions(str(tmp_path / str(size))).items()}
  grouped, alone = shapes[:4], shapes[4:]
  largest = zoombench.max_shape(config)
  unit = 4 * layout.window_patches
  for tokens, patches, _ in shapes:
    assert tokens == zoombench.shape_rung(tokens, zoombench.TOKEN_UNIT) <= largest[0]
    assert patches == zoombench.shape_rung(patches, unit) <= largest[1]
  # Two batches per view, the smaller images first: each batch's images are the view's next four by size.
  for view in range(2):
    sizes_asked = [p for _, _, ps in grouped[2 * view:2 * view + 2] for p in ps]
    assert sizes_asked == sorted(sizes_asked)
  assert grouped[0][1] < grouped[1][1] and grouped[2][1] < grouped[3][1]
  assert len({s[:2] for s in alone}) < len(alone) // 2  # 16 prompts alone, a few programs
  assert answers[4] == answers[1] and len(answers[4]) == 16


def test_agentic_baseline_beside_the_single_pass(bench, tmp_path):
  from zwz_jax.eval import agentic
  proc = _eval(bench, tmp_path, "--config.eval.agentic=true", "--config.eval.max_items=3",
               "--config.eval.agentic_max_new_tokens=8", suite=SUITE[:1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = agentic.read_results(str(tmp_path / "ckpt" / "bench"))
  assert sorted(rows) == sorted({r["id"] for r in _rows(tmp_path)})
  report = json.load(open(tmp_path / "report.json"))["benchmarks"]["bench"]["checkpoints"]["ckpt"]
  a = report["agentic"]
  # Item 2's image does not decode: skipped, not counted; the other two ran at least one turn each.
  assert a["n"] == 2 and a["skipped"] == 1 and a["mean_turns"] >= 1
  assert a["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows.values() if not r["skipped"]]))
  assert "| agentic turns |" in (tmp_path / "report.md").read_text()


def test_empty_prediction_is_wrong_not_an_error():
  from zwz_jax import answers
  v = answers.judge("", "B", options=("a", "b", "c", "d"))
  assert v.correct is False and v.reason == "empty prediction"


@pytest.mark.parametrize("mode", ["overlay", "coords"])
def test_global_view_grounded_as_in_training(tmp_path, mode):
  """eval.grounding marks the box on the global view exactly as the training pipeline does for the
  same record; the regional view (the crop) stays the bare question."""
  from array_record.python import array_record_module
  from zwz_jax import records
  from zwz_jax.data import pipeline, processor
  record_fixtures.write_records(str(tmp_path), 3, seed=7, sizes=(150, 300))
  items = {it.id: it for it in benchmarks.from_records(str(tmp_path))}
  config = load_config(f"{CONFIGS}/eval_tiny.py", [f"eval.grounding={mode}", f"data.grounding={mode}"])
  tok = processor.load_tokenizer("", config)
  evaluator = zoombench.DualViewEvaluator(config, None, tok)
  pre = pipeline.Preprocessor(config, tok, prompts_only=True)
  for path in records.shard_paths(str(tmp_path)):
    for raw in array_record_module.ArrayRecordReader(path).read_all():
      want = pre(raw)  # what training feeds the student for this record (prompt only)
      item = items[want["id"]]
      _, got = evaluator._example(item, "global")
      np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
      np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
      _, regional = evaluator._example(item, "regional")
      text = tok.decode(regional["input_ids"].tolist(), skip_special_tokens=False)
      assert records.FOCUS_OVERLAY not in text and "bounding box" not in text


def test_unknown_eval_grounding_names_the_key():
  from zwz_jax.config import ConfigError
  from zwz_jax.data import processor
  config = load_config(f"{CONFIGS}/eval_tiny.py", ["eval.grounding=box"])
  with pytest.raises(ConfigError, match="eval.grounding"):
    zoombench.DualViewEvaluator(config, None, processor.load_tokenizer("", config))


def test_regional_training_view_is_the_eval_crop(tmp_path):
  """data.view=regional trains on exactly what the regional eval view shows: the same crop pixels and
  the bare question, token for token."""
  from array_record.python import array_record_module
  from zwz_jax import records
  from zwz_jax.data import pipeline, processor
  record_fixtures.write_records(str(tmp_path), 3, seed=3, sizes=(150, 300))
  items = {it.id: it for it in benchmarks.from_records(str(tmp_path))}
  config = load_config(f"{CONFIGS}/eval_tiny.py", ["data.view=regional"])
  tok = processor.load_tokenizer("", config)
  evaluator = zoombench.DualViewEvaluator(config, None, tok)
  pre = pipeline.Preprocessor(config, tok, prompts_only=True)
  n = 0
  for path in records.shard_paths(str(tmp_path)):
    for raw in array_record_module.ArrayRecordReader(path).read_all():
      want = pre(raw)
      _, got = evaluator._example(items[want["id"]], "regional")
      np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
      np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
      _, full = evaluator._example(items[want["id"]], "global")
      assert len(full["pixel_values"]) > len(want["pixel_values"])  # the crop, not the full image
      n += 1
  assert n >= 3


def test_unknown_data_view_names_the_key():
  from zwz_jax.data import pipeline, processor
  config = load_config(f"{CONFIGS}/tiny.py", ["data.view=crop"])
  with pytest.raises(ValueError, match="data.view='crop'"):
    pipeline.Preprocessor(config, processor.load_tokenizer("", config))


def test_raw_prompt_and_sampling_settings(tmp_path):
  """eval.prompt=raw asks the benchmark's own query; the sampling keys reach the sampler, and a
  sampled row's key depends only on the seed, its item and view (the same on every host and run)."""
  from zwz_jax.config import ConfigError
  from zwz_jax.data import processor
  query = "How many lamps are there? Select from the following choices.\n(A) 0\n(B) 2\n(C) 1\n(D) 3"
  item = benchmarks._make_item(id="q", source="t:0", image=records.encode_image(Image.new("RGB", (64, 48))),
                               crop=None, prompt=query, answer="C")
  overrides = ["eval.prompt=raw", "eval.temperature=0.7", "eval.top_p=0.8", "eval.top_k=20",
               "eval.presence_penalty=1.5", "eval.seed=42", "eval.authors_judge=true"]
  config = load_config(f"{CONFIGS}/eval_tiny.py", overrides)
  tok = processor.load_tokenizer("", config)
  evaluator = zoombench.DualViewEvaluator(config, None, tok)
  _, ex = evaluator._example(item, "global")
  text = tok.decode(ex["input_ids"].tolist(), skip_special_tokens=False)
  assert "choices.\n(A) 0\n(B) 2" in text and records.MC_INSTRUCTION not in text
  s = evaluator.sampling
  assert (s.temperature, s.top_p, s.top_k, s.presence_penalty) == (0.7, 0.8, 20, 1.5)
  assert evaluator.authors_judge
  ours = zoombench.DualViewEvaluator(load_config(f"{CONFIGS}/eval_tiny.py"), None, tok)
  text = tok.decode(ours._example(item, "global")[1]["input_ids"].tolist(), skip_special_tokens=False)
  assert records.MC_INSTRUCTION in text and "\nA. 0\nB. 2" in text and "(A) 0" not in text
  key = lambda e, view: e._keys([(item, view)], 2)[0].tolist()
  assert key(evaluator, "global") == key(evaluator, "global") != key(evaluator, "regional")
  other = zoombench.DualViewEvaluator(load_config(f"{CONFIGS}/eval_tiny.py", overrides + ["eval.seed=43"]), None, tok)
  assert key(evaluator, "global") != key(other, "global")
  with pytest.raises(ConfigError, match="eval.prompt"):
    zoombench.DualViewEvaluator(load_config(f"{CONFIGS}/eval_tiny.py", ["eval.prompt=theirs"]), None, tok)

