"""Orbax checkpoints of the student's parameters.

Parameters are saved as a pure nested dict (no NNX metadata), so a checkpoint is restored against
an abstract target that carries the *current* mesh's shardings: a checkpoint written on one mesh
loads onto any other.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx

from zwz_jax.sharding import abstract_model


def save_params(path: str, model: nnx.Module) -> None:
  """Writes the model's parameters to `path` (a new directory); every process must call this."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def restore_params(path: str, make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh) -> nnx.Module:
  """Restores parameters saved by `save_params` straight into `mesh`'s shardings."""
  gdef, abs_state = abstract_model(make_model, mesh)
  target = nnx.to_pure_dict(abs_state)  # ShapeDtypeStructs carrying the target shardings
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.abspath(path), target)
  nnx.replace_by_pure_dict(abs_state, restored)
  return nnx.merge(gdef, abs_state)
