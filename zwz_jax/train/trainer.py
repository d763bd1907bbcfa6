"""The trainer: sharded state, the jitted optimizer update, evaluation; what it optimises and what it
feeds each step are given to it.

  trainer = Trainer(config, mesh, objective, source)

- an objective (`sft.AnswerLoss`, `grpo.ClippedObjective`) says which batch keys an update reads,
  `loss_sums(model, batch) -> (loss sum, denominator, other sums)` and `metrics(...)` of those;
- a batch source (`sft.RecordBatches`, `grpo.RolloutCollector`) turns the input pipeline into each
  step's update batches: `collect(trainer, state, data_iter, step) -> (batches, metrics, log)`; it
  also names its step, says whether the pipeline yields prompts only, how many optimizer updates a
  step makes and which batch sizes divide over the mesh.

State is {"step", "params", "opt_state"} with params a flat {path: array} dict (zwz_jax.params);
every leaf has a NamedSharding derived from the one logical-axis rules table, and the update is
`jax.jit` with in/out shardings and a donated state. `state["step"]` counts optimizer updates.
The resumable loop around it is zwz_jax.train.loop.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zwz_jax.data import batch as batch_lib
from zwz_jax.models import registry
from zwz_jax.params import ParamSpace, load_params
from zwz_jax.train import metrics as metrics_lib
from zwz_jax.train import optim
from zwz_jax.train.sft import AnswerLoss, RecordBatches


class Trainer:

  def __init__(self, config, mesh: jax.sharding.Mesh, objective=None, source=None):
    self.config, self.mesh = config, mesh
    self.objective = objective or AnswerLoss(config)
    self.source = source or RecordBatches(config)
    self.source.check(mesh)
    self.model_cfg = registry.model_config(config.model)
    self.space = ParamSpace(self.model_cfg, mesh, int(config.seed))
    self.tx = optim.make_optimizer(config.train, self.space.abstract, self.source.updates_per_step)
    self.lr = optim.schedule(config.train, self.source.updates_per_step)
    replicated = NamedSharding(mesh, PartitionSpec())
    abs_opt = jax.eval_shape(self.tx.init, self.space.abstract)
    opt_shardings = optim.state_shardings(abs_opt, self.space.abstract, mesh)
    self.state_shardings = {"step": replicated, "params": self.space.shardings, "opt_state": opt_shardings}
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": self.space.abstract, "opt_state": abs_opt},
        self.state_shardings)
    self._update = jax.jit(self._update_fn, in_shardings=(self.state_shardings, None),
                           out_shardings=(self.state_shardings, None), donate_argnums=0)
    self._eval_objective = AnswerLoss(config)  # periodic eval reads the records' answers, whatever we optimise
    self._eval = jax.jit(self._eval_fn)

  # -- state -------------------------------------------------------------------------------------

  def init_state(self) -> dict:
    """Fresh state: parameters from `train.init_from` (zwz_jax.params.load_params), a new optimizer
    state, step 0."""
    params, _ = load_params(self.config.train.init_from, self.space)
    opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}

  def model(self, params: dict) -> nnx.Module:
    return self.space.model(params)

  def device_batch(self, local_batch: dict, keys=None) -> dict:
    """Process-local numpy rows -> global arrays sharded over the batch axes."""
    return batch_lib.to_global(self.mesh, local_batch, keys or self.objective.batch_keys)

  # -- the jitted functions ----------------------------------------------------------------------

  def _update_fn(self, state, batch):
    """One optimizer update on a batch, in grad_accum_steps micro-batches: the objective's sums over
    them (so micro-batches and hosts combine into one mean over the batch), then optax."""
    k = self.config.train.grad_accum_steps
    params = state["params"]

    def sums_and_grads(mb):
      def f(p):
        loss, n, sums = self.objective.loss_sums(self.space.model(p), mb)
        return loss, (n, sums)
      (loss, (n, sums)), grads = jax.value_and_grad(f, has_aux=True)(params)
      return grads, loss, n, sums

    if k == 1:
      grads, loss, n, sums = sums_and_grads(batch)
    else:  # micro-batches in sequence: activations of one at a time
      micro = batch_lib.split_rows(batch, k)

      def body(carry, mb):
        return jax.tree.map(jnp.add, carry, sums_and_grads(mb)), None

      shapes = jax.eval_shape(sums_and_grads, jax.tree.map(lambda x: x[0], micro))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      (grads, loss, n, sums), _ = jax.lax.scan(body, zeros, micro)
    denom = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)  # mean over the batch
    updates, opt_state = self.tx.update(grads, state["opt_state"], params)
    new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
    metrics = {**self.objective.metrics(loss, denom, sums), "grad_norm": optax.tree.norm(grads),
               "lr": self.lr(state["step"])}
    return new, metrics

  def _eval_fn(self, params, batch):
    loss, n, sums = self._eval_objective.loss_sums(self.space.model(params), batch)
    return {"loss_sum": loss, "tokens": n, "correct": sums["correct"]}

  # -- host side ---------------------------------------------------------------------------------

  def update(self, state: dict, local_batch: dict) -> tuple[dict, dict]:
    """One optimizer update on process-local rows: (new state, metrics on device)."""
    with jax.set_mesh(self.mesh):
      return self._update(state, self.device_batch(local_batch))

  def step(self, state: dict, data_iter, step: int) -> tuple[dict, dict, dict]:
    """One training step: the source's batches, an update on each. Returns (new state, metrics,
    extra log fields). Throughput counts the updates' tokens and model FLOPs over the whole step."""
    t0 = time.perf_counter()
    batches, metrics, log = self.source.collect(self, state, data_iter, step)
    t1 = time.perf_counter()
    updates = []
    for batch in batches:
      state, m = self.update(state, batch)
      updates.append(jax.device_get(m))
    t2 = time.perf_counter()
    dt, pc = t2 - t0, jax.process_count()
    text = sum(float(np.sum(b["attention_mask"])) for b in batches) * pc
    vision = sum(float(np.sum(np.asarray(b["vision_segment_ids"]) > 0)) for b in batches) * pc
    flops = sum(metrics_lib.batch_train_flops(self.model_cfg, b) for b in batches) * pc
    # The share of the batches' token and patch slots that hold data (this process's rows): the
    # devices compute the padding too, and the FLOPs above count it, so the MFU does not show it.
    slots = lambda key: sum(np.size(b[key]) for b in batches) * pc
    metrics = {**metrics, **{k: float(np.mean([u[k] for u in updates])) for k in updates[0]},
               "step_time_s": dt, "update_time_s": t2 - t1, "text_tokens_per_s": text / dt,
               "vision_tokens_per_s": vision / dt, "tflops_per_s": flops / dt / 1e12,
               "mfu": flops / dt / (metrics_lib.peak_flops() * jax.device_count()),
               "text_fill": text / slots("attention_mask"), "vision_fill": vision / slots("vision_segment_ids")}
    return state, metrics, log

  def evaluate(self, params, batches) -> dict:
    """Teacher-forced answer loss and token accuracy over process-local record batches."""
    tot = {"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0}
    with jax.set_mesh(self.mesh):
      for b in batches:
        out = self._eval(params, self.device_batch(b, self._eval_objective.batch_keys))
        tot = {k: tot[k] + float(out[k]) for k in tot}
    n = max(tot["tokens"], 1.0)
    return {"loss": tot["loss_sum"] / n, "accuracy": tot["correct"] / n}
