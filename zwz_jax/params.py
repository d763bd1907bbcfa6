"""The student's parameters: a flat {"layers.0.attn.q_kernel": array} dict, and every place they come from.

A flat dict of arrays is the simplest pytree for optax, jit shardings and orbax alike; the NNX
module is rebuilt from it (inside jit, for free) whenever the forward pass needs it. `load_params`
reads parameters from any source we write or read straight into the mesh's shardings: training
starts from it, evaluation and conversion load through it. It sits below train and eval, which
both read checkpoints but never each other.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from zwz_jax.models import registry
from zwz_jax.sharding import abstract_model, create_sharded_model

INIT = "init"  # the untrained student: random init from the seed (also what an empty source means)
CHECKPOINTS = "checkpoints"  # a training workdir's checkpoint directory (zwz_jax.train.checkpoint)
STATE = "state"  # the checkpoint item holding {"step", "params", "opt_state"}


def _key(path) -> str:
  return ".".join(str(p) for p in path)


class ParamSpace:
  """A model family's graph definition and parameter template on a mesh, with flat <-> NNX conversion.

  `model_cfg` is the family's ModelConfig (`registry.model_config(config.model)`); `seed` only
  matters for `init`.
  """

  def __init__(self, model_cfg, mesh: jax.sharding.Mesh, seed: int = 0):
    self.model_cfg, self.mesh, self.seed = model_cfg, mesh, seed
    self.make_model = registry.factory(model_cfg, seed)
    self.graphdef, abs_state = abstract_model(self.make_model, mesh)
    self._template = [(_key(p), p, v) for p, v in nnx.to_flat_state(abs_state)]
    self.abstract = {k: v.get_value() for k, _, v in self._template}  # ShapeDtypeStruct with sharding
    self.shardings = {k: a.sharding for k, a in self.abstract.items()}

  def model(self, flat: dict) -> nnx.Module:
    missing = set(self.abstract) - set(flat)
    if missing:
      raise KeyError(f"parameters missing: {sorted(missing)[:5]}")
    state = nnx.from_flat_state([(p, v.replace(flat[k])) for k, p, v in self._template])
    return nnx.merge(self.graphdef, state)

  def init(self) -> dict:
    """Random parameters, initialised straight into their shardings."""
    return self.select(flatten(create_sharded_model(self.make_model, self.mesh)))

  def select(self, flat: dict) -> dict:
    """`flat` in the template's key order (what jit and orbax see)."""
    return {k: flat[k] for k in self.abstract}


def flatten(model: nnx.Module) -> dict[str, jax.Array]:
  return {_key(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def save_params(path: str, params: dict) -> None:
  """Writes flat parameters to `path` (a new directory); every process must call this."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), params)


def restore_trained_params(workdir: str, space: ParamSpace) -> tuple[dict, int]:
  """The parameters of a training workdir's latest checkpoint (not its optimizer state, so any
  trainer's checkpoint serves: SFT into RL, or evaluation), in `space`'s shardings; and the step."""
  directory = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), CHECKPOINTS)
  with ocp.CheckpointManager(directory, item_handlers={STATE: ocp.PyTreeCheckpointHandler()}) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), space.abstract)
    out = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item={"params": space.abstract}, restore_args={"params": restore_args}, partial_restore=True)}))
  return space.select(out[STATE]["params"]), step


def load_params(source: str, space: ParamSpace) -> tuple[dict, str]:
  """Parameters from `source`, in `space`'s shardings, and a description of what was loaded.

  `source`: a HF safetensors folder (config.json), a training workdir (its latest checkpoint), a
  parameter checkpoint (`save_params`, launch/convert.py), or "" / INIT: random init from the seed.
  """
  if source in ("", INIT):
    return space.init(), f"initial student (random init, seed {space.seed})"
  if os.path.exists(os.path.join(source, "config.json")):
    from zwz_jax.models import convert
    return space.select(flatten(convert.load_hf_state(space.model_cfg, source, space.mesh))), \
        f"HF checkpoint {source}"
  if os.path.isdir(os.path.join(source, CHECKPOINTS)):
    params, step = restore_trained_params(source, space)
    return params, f"training checkpoint {source} step {step}"
  with ocp.StandardCheckpointer() as ckptr:
    return space.select(ckptr.restore(os.path.abspath(source), space.abstract)), f"parameter checkpoint {source}"
