"""Orbax checkpoints: parameter-only checkpoints (conversion, init) and the trainer's checkpoints.

Everything is a flat {path: array} dict (zwz_jax.train.params) restored against an abstract target
that carries the *current* mesh's shardings, so a checkpoint written on one mesh loads on another.
A trainer checkpoint holds, in one step directory: `state` (step, params, optimizer state), `data`
(the grain iterator of every process) and `meta` (config, mesh, metrics), written asynchronously.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from zwz_jax.train.params import ParamSpace, flatten


def save_params(path: str, model: nnx.Module) -> None:
  """Writes the model's parameters to `path` (a new directory); every process must call this."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), flatten(model))


def restore_params(path: str, make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh) -> nnx.Module:
  """Restores parameters saved by `save_params` straight into `mesh`'s shardings."""
  space = ParamSpace(make_model, mesh)
  with ocp.StandardCheckpointer() as ckptr:
    flat = ckptr.restore(os.path.abspath(path), space.abstract)
  return space.model(flat)


def restore_trained_params(workdir: str, space: ParamSpace) -> tuple[dict, int]:
  """The parameters of a training workdir's latest checkpoint (not its optimizer state, so any
  trainer's checkpoint serves: SFT into RL, or evaluation), in `space`'s shardings; and the step."""
  directory = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")
  with ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), space.abstract)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": space.abstract}, restore_args={"params": restore_args}, partial_restore=True)))
  return dict(out["state"]["params"]), step


class Checkpointer:
  """Keep-N, async trainer checkpoints under `directory`."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    # Local paths or URIs that orbax understands (gs://... on TPU pods: every host must see them).
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_iterator, meta: dict[str, Any], *, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: dict, data_iterator=None) -> tuple[dict, dict]:
    """(state, meta) of `step`; the data iterator, if given, is set to its saved position."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out["state"], out["meta"]

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


INIT = "init"  # load_model's name for the untrained student


def load_model(config, path: str, mesh: jax.sharding.Mesh) -> tuple[nnx.Module, str]:
  """The student from any checkpoint we write or read, and a description of what was loaded.

  `path`: a HF safetensors folder (config.json), a training workdir (its latest checkpoint), a
  parameter checkpoint (launch/convert.py), or INIT: the student as training starts it (random
  init from `config.seed`), the before-training baseline. `config.model` must describe it.
  """
  from zwz_jax.models import convert, registry
  model_cfg = registry.model_config(config.model)
  if path == INIT:
    from zwz_jax.sharding import create_sharded_model
    return create_sharded_model(registry.factory(model_cfg, config.seed), mesh), \
        f"initial student (random init, seed {config.seed})"
  if os.path.exists(os.path.join(path, "config.json")):
    return convert.load_hf_state(model_cfg, path, mesh), f"HF checkpoint {path}"
  make = registry.factory(model_cfg)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    space = ParamSpace(make, mesh)
    params, step = restore_trained_params(path, space)
    return space.model(params), f"training checkpoint {path} step {step}"
  return restore_params(path, make, mesh), f"parameter checkpoint {path}"
