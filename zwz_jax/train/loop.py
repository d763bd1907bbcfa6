"""The SFT trainer (sharded state, the jitted train step) and the resumable loop every trainer runs in.

State is {"step", "params", "opt_state"} with params a flat {path: array} dict; every leaf has a
NamedSharding derived from the one logical-axis rules table, the step is `jax.jit` with in/out
shardings and a donated state, and a checkpoint holds state + data iterator together, so a run
killed at any point resumes bit-exactly and can resume on a different mesh.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zwz_jax.data.batch import MODEL_INPUTS, row_axis, split_rows
from zwz_jax.models import convert, registry
from zwz_jax.sharding import ShardingError, logical_to_spec, make_mesh
from zwz_jax.train import checkpoint as ckpt_lib
from zwz_jax.train import metrics as metrics_lib
from zwz_jax.train import optim
from zwz_jax.train.params import ParamSpace, flatten
from zwz_jax.train.sft import answer_loss_sums

BATCH_KEYS = MODEL_INPUTS + ("labels_mask",)


def batch_spec(key: str, ndim: int) -> PartitionSpec:
  """Batch arrays are split over (data, fsdp) on their row axis."""
  axes = [None] * ndim
  axes[row_axis(key)] = "act_batch"
  return logical_to_spec(tuple(axes))


@dataclasses.dataclass
class Trainer:
  config: Any
  mesh: jax.sharding.Mesh
  updates_per_step = 1  # optimizer updates per training step (GRPO: PPO epochs x mini-batches)
  step_name = "step"  # in logs
  prompts_only = False  # the input pipeline's batches: prompt + answer (SFT) or prompts (RL)

  def __post_init__(self):
    cfg = self.config
    self.model_cfg = registry.model_config(cfg.model)
    self.space = ParamSpace(registry.factory(self.model_cfg, cfg.seed), self.mesh)
    self.tx = optim.make_optimizer(cfg.train, self.space.abstract, self.updates_per_step)
    self.lr = optim.schedule(cfg.train, self.updates_per_step)
    self._check_batch_divides()
    replicated = NamedSharding(self.mesh, PartitionSpec())
    abs_opt = jax.eval_shape(self.tx.init, self.space.abstract)
    opt_shardings = optim.state_shardings(abs_opt, self.space.abstract, self.mesh)
    self.state_shardings = {"step": replicated, "params": self.space.shardings, "opt_state": opt_shardings}
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": self.space.abstract, "opt_state": abs_opt},
        self.state_shardings)
    self._train_step = jax.jit(self._step, in_shardings=(self.state_shardings, None),
                               out_shardings=(self.state_shardings, None), donate_argnums=0)
    self._eval_step = jax.jit(self._eval_sums)

  def _check_batch_divides(self):
    n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    gb, accum = self.config.data.global_batch_size, self.config.train.grad_accum_steps
    if gb % accum:
      raise ShardingError(f"data.global_batch_size={gb} is not divisible by train.grad_accum_steps={accum}")
    if (gb // accum) % n:
      raise ShardingError(
          f"the micro-batch (data.global_batch_size={gb} / train.grad_accum_steps={accum} = {gb // accum}) "
          f"does not divide over the batch axes data x fsdp = {n} of mesh {dict(self.mesh.shape)}")

  # -- state -------------------------------------------------------------------------------------

  def init_params(self) -> dict:
    """Parameters from `train.init_from` (HF safetensors dir, training workdir, parameter
    checkpoint) or random."""
    src = self.config.train.init_from
    make = registry.factory(self.model_cfg, self.config.seed)
    if not src:
      from zwz_jax.sharding import create_sharded_model
      params = flatten(create_sharded_model(make, self.mesh))
    elif os.path.exists(os.path.join(src, "config.json")):
      params = flatten(convert.load_hf_state(self.model_cfg, src, self.mesh))
    elif os.path.isdir(os.path.join(src, "checkpoints")):  # a training workdir, e.g. SFT before RL
      params, _ = ckpt_lib.restore_trained_params(src, self.space)
    else:
      params = flatten(ckpt_lib.restore_params(src, make, self.mesh))
    return {k: params[k] for k in self.space.abstract}

  def init_state(self) -> dict:
    """Fresh state: `init_params`, a new optimizer state, step 0."""
    params = self.init_params()
    opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}

  def model(self, params: dict) -> nnx.Module:
    return self.space.model(params)

  # -- steps -------------------------------------------------------------------------------------

  def _loss_sums(self, params, batch):
    """(loss sum, denominator, other sums) of a (micro-)batch: sums, so that micro-batches and
    hosts combine into one mean over the global batch."""
    model = self.space.model(params)
    hidden = model(**{k: batch[k] for k in MODEL_INPUTS}, head=False)
    loss, n, correct = answer_loss_sums(hidden, model.logits, batch["input_ids"], batch["labels_mask"],
                                        self.config.train.z_loss, block=int(self.config.train.lm_head_block))
    return loss, n, {"correct": correct}

  def _metrics(self, loss, denom, sums) -> dict:
    return {"loss": loss / denom, "accuracy": sums["correct"] / denom, "answer_tokens": denom}

  def _step(self, state, batch):
    k = self.config.train.grad_accum_steps
    params = state["params"]

    def sums_and_grads(mb):
      def f(p):
        loss, n, sums = self._loss_sums(p, mb)
        return loss, (n, sums)
      (loss, (n, sums)), grads = jax.value_and_grad(f, has_aux=True)(params)
      return grads, loss, n, sums

    if k == 1:
      grads, loss, n, sums = sums_and_grads(batch)
    else:  # micro-batches in sequence: activations of one at a time
      micro = split_rows(batch, k)

      def body(carry, mb):
        return jax.tree.map(jnp.add, carry, sums_and_grads(mb)), None

      shapes = jax.eval_shape(sums_and_grads, jax.tree.map(lambda x: x[0], micro))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      (grads, loss, n, sums), _ = jax.lax.scan(body, zeros, micro)
    denom = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)  # mean over the global batch
    updates, opt_state = self.tx.update(grads, state["opt_state"], params)
    new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
    metrics = {**self._metrics(loss, denom, sums), "grad_norm": optax.tree.norm(grads), "lr": self.lr(state["step"])}
    return new, metrics

  def _eval_sums(self, params, batch):
    # The answer loss whatever the trainer's objective: periodic eval reads the records' answers.
    loss, n, sums = Trainer._loss_sums(self, params, batch)
    return {"loss_sum": loss, "tokens": n, "correct": sums["correct"]}

  batch_keys = BATCH_KEYS

  def device_batch(self, local_batch: dict, keys=None) -> dict:
    """Process-local numpy batch -> global arrays sharded over the batch axes."""
    out = {}
    for key in keys or self.batch_keys:
      x = np.asarray(local_batch[key])
      sharding = NamedSharding(self.mesh, batch_spec(key, x.ndim))
      out[key] = jax.make_array_from_process_local_data(sharding, x)
    return out

  def set_tokenizer(self, tokenizer) -> None:
    self.tokenizer = tokenizer

  def loop_step(self, state: dict, data_iter, step: int) -> tuple[dict, dict, dict]:
    """One step of the training loop: (new state, metrics, extra log fields)."""
    pc = jax.process_count()
    t0 = time.perf_counter()
    local = next(data_iter)
    state, m = self.train_step(state, local)
    m = jax.device_get(m)
    dt = time.perf_counter() - t0
    text_tokens = float(np.sum(local["attention_mask"])) * pc
    vision_tokens = float(np.sum(np.asarray(local["vision_segment_ids"]) > 0)) * pc
    flops = metrics_lib.batch_train_flops(self.model_cfg, local) * pc
    peak = metrics_lib.peak_flops() * jax.device_count()
    metrics = {**{k: float(v) for k, v in m.items()}, "step_time_s": dt, "text_tokens_per_s": text_tokens / dt,
               "vision_tokens_per_s": vision_tokens / dt, "tflops_per_s": flops / dt / 1e12, "mfu": flops / dt / peak}
    return state, metrics, {"batch": batch_digest(local)}

  def train_step(self, state, local_batch):
    with jax.set_mesh(self.mesh):
      return self._train_step(state, self.device_batch(local_batch))

  def evaluate(self, params, batches) -> dict:
    tot = {"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0}
    with jax.set_mesh(self.mesh):
      for b in batches:
        out = self._eval_step(params, self.device_batch(b, BATCH_KEYS))
        tot = {k: tot[k] + float(out[k]) for k in tot}
    n = max(tot["tokens"], 1.0)
    return {"loss": tot["loss_sum"] / n, "accuracy": tot["correct"] / n}


def batch_digest(local_batch: dict) -> str:
  """Fingerprint of the records in a batch (for data-order checks in logs)."""
  ids = local_batch.get("ids")
  blob = "|".join(map(str, ids)) if ids is not None else np.asarray(local_batch["input_ids"]).tobytes().hex()
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _StopFlag:
  """Set by SIGTERM (preemption notice): the loop checkpoints and exits cleanly."""

  def __init__(self):
    self.set = False
    self._prev = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, *_):
    self.set = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._prev)


def run(config, workdir: str, trainer: Trainer) -> dict:
  """The loop every trainer shares: (re)start from `workdir`, take `trainer.loop_step` until
  train.steps, log, evaluate, checkpoint (periodically, at the end, on SIGTERM) state and data
  iterator together. Returns the final state, the last step's metrics and the trainer."""
  from zwz_jax.data import pipeline as data_pipeline
  from zwz_jax.data import processor

  tokenizer = processor.load_tokenizer(config.processor.tokenizer, config)
  trainer.set_tokenizer(tokenizer)
  pi, pc = jax.process_index(), jax.process_count()
  # Hosts agree on each step's bucket shape (a tiny collective, run on this thread).
  sync = data_pipeline.jax_bucket_sync() if pc > 1 else None
  data_iter = data_pipeline.make_train_iterator(config, tokenizer, process_index=pi, process_count=pc,
                                                bucket_sync=sync, prompts_only=trainer.prompts_only)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                               async_save=config.train.async_checkpoint)
  writer = metrics_lib.MetricsWriter(workdir, enabled=pi == 0)
  latest = ckpt.latest_step()
  if latest is None:
    state = trainer.init_state()
  else:
    state, _ = ckpt.restore(latest, trainer.abstract_state, data_iter)
    print(f"resumed from {trainer.step_name} {latest} in {workdir}", flush=True)
  eval_batches = None
  stop = _StopFlag()
  meta = {"config": config.to_dict(), "mesh": dict(trainer.mesh.shape)}
  last: dict = {}
  step = int(state["step"]) // trainer.updates_per_step
  bar = tqdm.tqdm(total=config.train.steps, initial=step, desc=f"{trainer.step_name}s", unit=trainer.step_name,
                  **({} if pi == 0 else {"disable": True}))  # TQDM_DISABLE still applies on process 0
  try:
    while step < config.train.steps:
      state, last, extra = trainer.loop_step(state, data_iter, step)
      step += 1
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
        print(f"preempted: checkpoint at {trainer.step_name} {step} written, exiting", flush=True)
        break
    ckpt.wait()
  finally:
    bar.close()
    stop.restore()
    ckpt.close()
    writer.close()
  return {"state": state, "metrics": last, "trainer": trainer}


def train(config, workdir: str) -> dict:
  """Runs (or resumes) supervised training in `workdir`; returns the last step's metrics."""
  return run(config, workdir, Trainer(config, make_mesh(config.mesh)))
