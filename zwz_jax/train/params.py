"""The trainer's view of the model: a flat {"layers.0.attn.q_kernel": array} dict of parameters.

A flat dict of arrays is the simplest pytree for optax, jit shardings and orbax alike; the NNX
module is rebuilt from it (inside jit, for free) whenever the forward pass needs it.
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from zwz_jax.sharding import abstract_model


def _key(path) -> str:
  return ".".join(str(p) for p in path)


class ParamSpace:
  """Graph definition + parameter template of a model, with flat <-> NNX conversion."""

  def __init__(self, make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh):
    self.graphdef, abs_state = abstract_model(make_model, mesh)
    self._template = [(_key(p), p, v) for p, v in nnx.to_flat_state(abs_state)]
    self.abstract = {k: v.get_value() for k, _, v in self._template}  # ShapeDtypeStruct with sharding
    self.shardings = {k: a.sharding for k, a in self.abstract.items()}

  def model(self, flat: dict) -> nnx.Module:
    missing = set(self.abstract) - set(flat)
    if missing:
      raise KeyError(f"parameters missing: {sorted(missing)[:5]}")
    state = nnx.from_flat_state([(p, v.replace(flat[k])) for k, p, v in self._template])
    return nnx.merge(self.graphdef, state)


def flatten(model: nnx.Module) -> dict[str, jax.Array]:
  return {_key(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
