"""The resumable training loop every trainer runs in, and the trainers by `config.trainer`.

A checkpoint holds state + data iterator together, so a run killed at any point resumes bit-exactly
and can resume on a different mesh; SIGTERM (a preemption notice) writes one and exits.
"""
from __future__ import annotations

import math
import os
import signal

import jax
import tqdm

from zwz_jax.params import CHECKPOINTS
from zwz_jax.sharding import make_mesh
from zwz_jax.train import checkpoint as ckpt_lib
from zwz_jax.train import metrics as metrics_lib
from zwz_jax.train.trainer import Trainer

TRAINERS = ("sft", "grpo")


def build(config, mesh: jax.sharding.Mesh, tokenizer=None) -> Trainer:
  """The trainer `config.trainer` names: the SFT answer loss over record batches, or GRPO's clipped
  objective over rollouts (which decode with `tokenizer`)."""
  if config.trainer == "sft":
    return Trainer(config, mesh)
  if config.trainer == "grpo":
    from zwz_jax.train import grpo
    return Trainer(config, mesh, grpo.ClippedObjective(config), grpo.RolloutCollector(config, tokenizer))
  raise KeyError(f"config key trainer={config.trainer!r} is not one of {TRAINERS}")


class _StopFlag:
  """Set by SIGTERM (preemption notice): the loop checkpoints and exits cleanly."""

  def __init__(self):
    self.set = False
    self._prev = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, *_):
    self.set = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._prev)


def run(trainer: Trainer, workdir: str, tokenizer) -> dict:
  """(Re)starts from `workdir`, takes `trainer.step` until train.steps, logs, evaluates and
  checkpoints (periodically, at the end, on SIGTERM) state and data iterator together. Returns the
  final state, the last step's metrics and the trainer."""
  from zwz_jax.data import pipeline as data_pipeline

  config, source = trainer.config, trainer.source
  pi, pc = jax.process_index(), jax.process_count()
  # Hosts agree on each step's bucket shape (a tiny collective, run on this thread).
  sync = data_pipeline.jax_bucket_sync() if pc > 1 else None
  data_iter = data_pipeline.make_train_iterator(config, tokenizer, process_index=pi, process_count=pc,
                                                bucket_sync=sync, prompts_only=source.prompts_only)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=config.train.keep_checkpoints,
                               async_save=config.train.async_checkpoint)
  writer = metrics_lib.MetricsWriter(workdir, enabled=pi == 0)
  latest = ckpt.latest_step()
  if latest is None:
    state = trainer.init_state()
  else:
    state, _ = ckpt.restore(latest, trainer.abstract_state, data_iter)
    print(f"resumed from {source.step_name} {latest} in {workdir}", flush=True)
  eval_batches = None
  stop = _StopFlag()
  meta = {"config": config.to_dict(), "mesh": dict(trainer.mesh.shape)}
  last: dict = {}
  step = int(state["step"]) // source.updates_per_step
  bar = tqdm.tqdm(total=config.train.steps, initial=step, desc=f"{source.step_name}s", unit=source.step_name,
                  **({} if pi == 0 else {"disable": True}))  # TQDM_DISABLE still applies on process 0
  try:
    while step < config.train.steps:
      state, last, extra = trainer.step(state, data_iter, step)
      step += 1
      _check_finite(last, source, step, ckpt)
      bar.update(1)
      if step % config.train.log_every == 0 or step == config.train.steps:
        writer.write(step, last, extra=extra)
      if config.train.eval_every and step % config.train.eval_every == 0 and config.data.eval:
        if eval_batches is None:
          eval_batches = data_pipeline.make_eval_batches(config, tokenizer, config.data.eval,
                                                         process_index=pi, process_count=pc, bucket_sync=sync)
        writer.write(step, trainer.evaluate(state["params"], eval_batches), prefix="eval")
      preempted = stop.set or ckpt.reached_preemption(step)
      if step % config.train.checkpoint_every == 0 or step == config.train.steps or preempted:
        ckpt.save(step, state, data_iter, {**meta, "metrics": last}, force=True)
      if preempted:
        print(f"preempted: checkpoint at {source.step_name} {step} written, exiting", flush=True)
        break
    ckpt.wait()
  finally:
    bar.close()
    stop.restore()
    ckpt.close()
    writer.close()
  return {"state": state, "metrics": last, "trainer": trainer}


def _check_finite(metrics: dict, source, step: int, ckpt) -> None:
  """Stops the run, before any checkpoint of it is written, once its loss is NaN or infinite: the
  last checkpoint stays the last good state. Every step: its metrics are host floats already."""
  if source.loss_key not in metrics:
    return
  loss = float(metrics[source.loss_key])
  if not math.isfinite(loss):
    last_saved = ckpt.latest_step()  # asked only when the run stops
    kept = f"{source.step_name} {last_saved}" if last_saved is not None else "none"
    raise FloatingPointError(f"{source.step_name} {step}: {source.loss_key} is {loss}; stopped without "
                             f"checkpointing it (last checkpoint: {kept})")


def train(config, workdir: str) -> dict:
  """Runs (or resumes) the trainer `config.trainer` names in `workdir` (see `run`)."""
  from zwz_jax.data import processor
  tokenizer = processor.load_tokenizer(config.processor.tokenizer, config)
  return run(build(config, make_mesh(config.mesh), tokenizer), workdir, tokenizer)
