"""Training: sharded == single device, exact resume after kill -9, restore on another mesh,
two processes == one, SIGTERM checkpoints, the loss falls, and clear errors."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import record_fixtures
from tests.shared import CONFIGS, KILL_AT, LAUNCH, free_port, shared_dir
from zwz_jax.config import load_config
from zwz_jax.data import pipeline as data_pipeline
from zwz_jax.data import processor
from zwz_jax.sharding import ShardingError, make_mesh
from zwz_jax.train import checkpoint as ckpt_lib
from zwz_jax.train.trainer import Trainer


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
  return shared_dir(tmp_path_factory, "train_records",
                    lambda d: record_fixtures.write_records(d, 48, seed=3, sizes=(150, 300)))


def _config(records_dir, *overrides):
  return load_config(f"{CONFIGS}/tiny.py", [f"data.train={records_dir}", "train.warmup_steps=1", *overrides])


def _batches(config, n):
  tok = processor.load_tokenizer("", config)
  it = data_pipeline.make_train_iterator(config, tok)
  return [next(it) for _ in range(n)]


def _mesh(data, fsdp, tensor):
  n = data * fsdp * tensor
  return make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, devices=jax.devices()[:n])


def _train(trainer, batches, state=None):
  state = state or trainer.init_state()
  losses = []
  for b in batches:
    state, m = trainer.update(state, b)
    losses.append(float(m["loss"]))
  return state, losses


def _params(state):
  return {k: np.asarray(v) for k, v in state["params"].items()}


def test_sharded_steps_equal_single_device(records_dir):
  # Scanned, as the students run on a mesh (the tiny default unrolls; both: tests/test_scan.py).
  config = _config(records_dir, "model.scan_layers=True")
  batches = _batches(config, 3)
  single = Trainer(config, _mesh(1, 1, 1))
  init = _params(single.init_state())
  one_state, one = _train(single, batches)
  many_state, many = _train(Trainer(config, _mesh(2, 2, 2)), batches)
  # Same math; only the order of fp32 reductions across shards differs (~1e-7 relative), so the
  # losses agree to round-off. Parameters: Adam divides each update by sqrt(v), so an element whose
  # gradient is itself at round-off level can move by a visible fraction of the learning rate; we
  # require the difference to stay below 0.1% of the largest parameter change of the run.
  np.testing.assert_allclose(many, one, rtol=1e-5)
  a, b = _params(one_state), _params(many_state)
  assert a.keys() == b.keys()
  moved = max(np.abs(a[k] - init[k]).max() for k in a)
  worst = max(np.abs(b[k] - a[k]).max() for k in a)
  assert moved > 1e-3 and worst <= 1e-3 * moved, (worst, moved)


def test_step_reports_how_full_the_batch_slots_are(records_dir):
  """text_fill / vision_fill: the share of the batch's token and patch slots that hold data."""
  config = _config(records_dir)
  batch = _batches(config, 1)[0]
  trainer = Trainer(config, _mesh(1, 1, 1))
  _, m, _ = trainer.step(trainer.init_state(), iter([batch]), 0)
  mask, seg = batch["attention_mask"], batch["vision_segment_ids"]
  assert m["text_fill"] == pytest.approx(mask.sum() / mask.size) and 0 < m["text_fill"] < 1
  assert m["vision_fill"] == pytest.approx((seg > 0).sum() / seg.size) and 0 < m["vision_fill"] < 1


def test_batch_that_does_not_divide_the_data_axes(records_dir):
  with pytest.raises(ShardingError, match=r"data.global_batch_size=6 .* does not divide over the batch axes "
                                          r"data x fsdp = 4"):
    Trainer(_config(records_dir, "data.global_batch_size=6"), _mesh(2, 2, 2))


def test_loss_falls(records_dir):
  """Tiny student, 30 steps: the answer loss drops from ~ln(vocab) to well under a quarter of it."""
  config = _config(records_dir, "train.steps=30", "train.warmup_steps=3")
  _, losses = _train(Trainer(config, _mesh(1, 1, 1)), _batches(config, 30))
  first, last = losses[0], float(np.mean(losses[-5:]))
  print(f"loss {first:.3f} -> {last:.3f}")
  assert first > 5.5  # ~ln(512) = 6.24 at random init
  assert last < first / 4


def test_a_nan_loss_stops_the_run_before_it_is_checkpointed(records_dir, tmp_path):
  """A NaN learning rate makes every update NaN: step 1's loss (before any update) is checkpointed,
  step 2's NaN stops the run with an error naming both, and no NaN state is written."""
  from zwz_jax.train import loop
  config = _config(records_dir, "train.steps=4", "train.learning_rate=nan", "train.log_every=1",
                   "train.checkpoint_every=1", "train.async_checkpoint=false")
  with pytest.raises(FloatingPointError, match=r"step 2: loss is nan; .*last checkpoint: step 1"):
    loop.train(config, str(tmp_path))
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=3).latest_step() == 1


def test_restore_on_other_meshes(records_dir, tmp_path):
  """Checkpoint written on (fsdp=8), restored onto (fsdp=2, tensor=4) and onto one device."""
  config = _config(records_dir)
  batches = _batches(config, 3)
  writer = Trainer(config, _mesh(1, 8, 1))
  state, _ = _train(writer, batches[:2])
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=1)
  tok = processor.load_tokenizer("", config)
  it = data_pipeline.make_train_iterator(config, tok)
  ckpt.save(2, state, it, {"note": "test"}, force=True)
  ckpt.wait()
  _, expected = writer.update(state, batches[2])
  for mesh in (_mesh(1, 2, 4), _mesh(1, 1, 1)):
    reader = Trainer(config, mesh)
    restored, meta = ckpt.restore(2, reader.abstract_state)
    assert meta == {"note": "test"} and int(restored["step"]) == 2
    q = restored["params"]["layers.0.attn.q_kernel"]
    assert q.sharding.mesh.shape == mesh.shape
    _, got = reader.update(restored, batches[2])
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=1e-5)
  ckpt.close()


# ---- subprocess runs of launch/train.py ----------------------------------------------------------

def _launch(workdir, records_dir, *extra, env=None, wait=True, kill_at=""):
  # kill_at: tests/kill_at.py's point (e.g. "train_steps=5"), where the run gets a SIGKILL.
  harness = [f"{KILL_AT}", kill_at] if kill_at else []
  cmd = [sys.executable, *harness, f"{LAUNCH}/train.py", f"--config={CONFIGS}/tiny.py", f"--workdir={workdir}",
         f"--config.data.train={records_dir}", "--config.train.steps=6", "--config.train.checkpoint_every=2",
         "--config.train.log_every=1", "--config.train.warmup_steps=1", *extra]
  env = {**os.environ, **(env or {})}
  if not wait:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)


def _final_params(workdir, config):
  trainer = Trainer(config, _mesh(1, 1, 1))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
  state, _ = ckpt.restore(ckpt.latest_step(), trainer.abstract_state)
  ckpt.close()
  return int(state["step"]), _params(state)


def _data_order(workdir):
  """Batch fingerprint per step; a resumed run's rows replace the interrupted run's."""
  order = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "batch" in row:
        order[row["step"]] = row["batch"]
  return [order[s] for s in sorted(order)]


@pytest.fixture(scope="module")
def reference_run(records_dir, tmp_path_factory):
  def build(workdir):
    out = _launch(workdir, records_dir, f"--config.data.eval={records_dir}", "--config.train.eval_every=3")
    assert out.returncode == 0, out.stderr[-3000:]
  return shared_dir(tmp_path_factory, "train_reference", build)


@pytest.mark.xdist_group("train_reference")  # shares the fixture run: one worker
def test_periodic_eval_writes_metrics(reference_run):
  rows = [json.loads(l) for l in open(os.path.join(reference_run, "metrics.jsonl"))]
  evals = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert all(np.isfinite(r["eval/loss"]) and 0 <= r["eval/accuracy"] <= 1 for r in evals)


@pytest.mark.xdist_group("train_reference")  # shares the fixture run: one worker
def test_resume_after_kill_is_bit_exact(records_dir, reference_run, tmp_path):
  # Killed after step 5: the async checkpoint of step 4 may be half written (it is then ignored);
  # step 2's is complete, since a save waits for the previous one.
  killed = _launch(tmp_path, records_dir, kill_at="train_steps=5")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = _launch(tmp_path, records_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 2" in resumed.stdout or "resumed from step 4" in resumed.stdout
  config = _config(records_dir)
  step_a, a = _final_params(reference_run, config)
  step_b, b = _final_params(str(tmp_path), config)
  assert step_a == step_b == 6
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg=k)  # bit-exact on CPU
  assert _data_order(str(tmp_path)) == _data_order(reference_run)


def test_sigterm_writes_a_checkpoint_and_exits(records_dir, tmp_path):
  proc = _launch(tmp_path, records_dir, "--config.train.steps=100000", "--config.train.checkpoint_every=1000",
                 wait=False)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert "preempted: checkpoint at step" in out
  step = int(out.split("preempted: checkpoint at step ")[1].split()[0])
  assert 2 <= step < 1000
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=3).latest_step() == step


@pytest.mark.xdist_group("train_reference")  # shares the fixture run: one worker
def test_two_processes_match_one(records_dir, reference_run, tmp_path):
  """Two JAX processes (4 CPU devices each, gloo collectives on loopback) == one process with 8."""
  port = free_port()
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [_launch(tmp_path, records_dir, f"--config.data.eval={records_dir}", "--config.train.eval_every=3",
                   "--coordinator_address=127.0.0.1:%d" % port, "--num_processes=2",
                   f"--process_id={i}", "--cpu_collectives=gloo", env=env, wait=False) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = tmp_path / "single"
  # The reference ran on one process with the 8-device default mesh (fsdp=8).
  config = _config(records_dir)
  step_a, a = _final_params(reference_run, config)
  step_b, b = _final_params(str(tmp_path), config)
  assert step_a == step_b == 6 and not single.exists()
  # Same examples per step; rows are ordered by process, so sums differ in round-off only (see
  # test_sharded_steps_equal_single_device for the tolerance).
  moved = max(np.abs(a[k]).max() for k in a)
  worst = max(np.abs(b[k] - a[k]).max() for k in a)
  assert worst <= 1e-4 * moved, (worst, moved)
  losses = lambda path: [r["train/loss"] for r in map(json.loads, open(path)) if "train/loss" in r]
  ref_losses = losses(os.path.join(reference_run, "metrics.jsonl"))
  two_losses = losses(tmp_path / "metrics.jsonl")
  np.testing.assert_allclose(two_losses, ref_losses, rtol=1e-5)


def test_remat_changes_memory_not_math(records_dir):
  one_bucket = "data.buckets=((320, 512),)"  # one step program per policy
  batches = _batches(_config(records_dir, one_bucket), 2)
  _, plain = _train(Trainer(_config(records_dir, one_bucket), _mesh(1, 1, 1)), batches)
  for policy in ("full", "dots"):
    _, remat = _train(Trainer(_config(records_dir, one_bucket, f"model.remat={policy}"), _mesh(1, 1, 1)), batches)
    np.testing.assert_allclose(remat, plain, rtol=1e-5)


def test_init_from_hf_checkpoint(records_dir, tmp_path):
  """train.init_from: a HF safetensors folder initialises the student (the usual fine-tuning start)."""
  from tests import hf_reference as ref
  from zwz_jax.models import convert
  from zwz_jax.models.qwen2_5_vl import ModelConfig
  config = _config(records_dir, f"train.init_from={tmp_path}")
  cfg = ModelConfig.from_config(config.model)
  hf = ref.hf_model(cfg, seed=7)
  hf.save_pretrained(tmp_path)
  state = Trainer(config, _mesh(1, 2, 2)).init_state()
  sd = {convert.canonical_hf_name(k, cfg): v.numpy() for k, v in hf.state_dict().items()}
  for r in convert.rules(cfg):
    np.testing.assert_array_equal(r.to_hf(np.asarray(state["params"][r.ours])), sd[r.hf], err_msg=r.hf)
