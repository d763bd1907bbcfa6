"""Optimizer: AdamW with warmup + cosine decay, global-norm clipping, per-module learning rates.

Modules are the vision tower, the patch mergers (Qwen3-VL's DeepStack mergers too) and the text
decoder (with embeddings and head). A
learning-rate scale of 0 freezes a module: it gets no update and no optimizer state.
"""
from __future__ import annotations

from typing import Mapping

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

MODULES = ("vision", "merger", "text")


def module_of(path: str) -> str:
  """Which trainable module a parameter path ('visual.blocks.0.attn.qkv_kernel', ...) belongs to."""
  if path.startswith(("visual.merger.", "visual.deepstack_mergers.")):
    return "merger"
  if path.startswith("visual."):
    return "vision"
  return "text"


def schedule(train_cfg, updates_per_step: int = 1) -> optax.Schedule:
  """Linear warmup to the peak learning rate, then cosine decay to end_lr_frac * peak.

  train.steps and train.warmup_steps count training steps; the schedule counts optimizer updates,
  `updates_per_step` of them per step (several PPO updates per RL step)."""
  peak = train_cfg.learning_rate
  k = int(updates_per_step)
  warmup = max(0, min(train_cfg.warmup_steps, train_cfg.steps)) * k
  decay = max(1, train_cfg.steps * k - warmup)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
      decay_steps=warmup + decay, end_value=peak * train_cfg.end_lr_frac)


def make_optimizer(train_cfg, params: Mapping[str, jax.Array],
                   updates_per_step: int = 1) -> optax.GradientTransformation:
  """`params` is the flat {path: array} dict the trainer optimizes."""
  scales = {m: float(train_cfg.lr_scale[m]) for m in MODULES}
  lr = schedule(train_cfg, updates_per_step)

  def adamw(scale):
    return optax.adamw(lambda step: lr(step) * scale, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                       weight_decay=train_cfg.weight_decay)

  transforms = {m: adamw(s) if s > 0 else optax.set_to_zero() for m, s in scales.items()}
  labels = {k: module_of(k) for k in params}
  chain = []
  if train_cfg.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(train_cfg.grad_clip))
  chain.append(optax.multi_transform(transforms, labels))
  return optax.chain(*chain)


def state_shardings(abstract_state, abstract_params: Mapping[str, jax.ShapeDtypeStruct], mesh: jax.sharding.Mesh):
  """The sharding of every leaf of an optimizer state (`jax.eval_shape(tx.init, params)`): a leaf that stands for a parameter (Adam's moments,
  under any chain, `multi_transform` mask or frozen module) takes that parameter's sharding; the
  rest (step counts, scalars, factored statistics of another shape) is replicated.

  Stated explicitly because XLA leaves zeros that do not depend on their input replicated: a jitted
  `tx.init` without out_shardings puts the whole optimizer state on every chip. Optax keeps
  per-parameter state in trees shaped like the parameters, so with our flat {path: array} params a
  leaf stands for parameter `k` exactly when the last dictionary key on its path is `k`.
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def sharding(path, leaf):
    keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    param = abstract_params.get(keys[-1]) if keys else None
    return param.sharding if param is not None and param.shape == leaf.shape else replicated

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)
