"""Run a stack of identical layers as one `lax.scan` (`model.scan_layers`) or as a Python loop.

Parameters stay one module per layer (checkpoints and HF conversion see `layers.0`, `layers.1`, ...):
the scan stacks the layers' parameters inside the traced step, sharded like the parameters with the
layer axis whole, and runs one copy of the layer body over them. The program, and its compile time,
then no longer grow with depth. The stacked copy costs one extra set of the stacked layers'
parameter shards per chip; the gradient flows back through the stack to each layer.

A family splits its layers into runs wherever the body changes (a full-attention vision block among
window blocks, a DeepStack tap or injection, the layer whose attention probabilities are asked for)
and runs each run through `run_layers`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from zwz_jax.sharding import constrain

# What a rematerialised layer keeps from its forward pass: nothing ("full"), matmul outputs
# ("dots"), or matmul outputs without a batch dimension ("dots_no_batch": weights-only products).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

Body = Callable[[nnx.Module, Any, Any], tuple[Any, Any]]


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _stack(states):
  """Per-layer states -> one state whose every value has a leading layer axis (kept whole)."""

  def stack(*vs):
    value = jnp.stack([v.get_value() for v in vs])
    axes = vs[0].get_metadata().get("logical_axes")
    if axes is not None:
      value = constrain(value, ("layers", *axes))
    return vs[0].replace(value)

  return jax.tree.map(stack, *states, is_leaf=_is_var)


def run_layers(layers: Sequence[nnx.Module], body: Body, carry, xs=None, *, scan: bool = True,
               remat: str = "none"):
  """Folds `body(layer, carry, x) -> (carry, y)` over `layers` in order.

  xs: a pytree whose leaves have a leading axis of len(layers) (x of layer i is its i-th slice),
  or None. Returns (carry, ys) with ys stacked on a leading layer axis (None where body returns
  None). remat: the policy name (REMAT_POLICIES) each layer's body is recomputed under in the
  backward pass. scan=False, a single layer, or layers of different structure: a Python loop.
  """
  layers = list(layers)
  policy = REMAT_POLICIES[remat]
  splits = [nnx.split(layer) for layer in layers]
  graphdef = splits[0][0]
  if scan and len(layers) > 1 and all(g == graphdef for g, _ in splits[1:]):

    def step(carry, inputs):
      state, x = inputs
      return body(nnx.merge(graphdef, state), carry, x)

    if remat != "none":
      step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    return jax.lax.scan(step, carry, (_stack([s for _, s in splits]), xs))

  def apply(state, carry, x, graphdef):
    return body(nnx.merge(graphdef, state), carry, x)

  if remat != "none":
    apply = jax.checkpoint(apply, policy=policy, static_argnums=(3,))
  ys = []
  for i, (g, state) in enumerate(splits):
    carry, y = apply(state, carry, None if xs is None else jax.tree.map(lambda a, i=i: a[i], xs), g)
    ys.append(y)
  return carry, jax.tree.map(lambda *y: jnp.stack(y), *ys)


def runs(n: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
  """[start, stop) ranges covering 0..n, cut before each index in `cuts`."""
  bounds = sorted({0, n, *(c for c in cuts if 0 < c < n)})
  return list(zip(bounds, bounds[1:]))
