"""The trainer's orbax checkpoints: state, data iterator and metadata together, keep-N, async.

A checkpoint holds, in one step directory: `state` (step, flat params, optimizer state), `data`
(the grain iterator of every process) and `meta` (config, mesh, metrics). State is restored
against an abstract target that carries the *current* mesh's shardings, so a checkpoint written on
one mesh loads on another. Reading just the parameters (for RL or evaluation) is
`zwz_jax.params.load_params`.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp

from zwz_jax.params import STATE


class Checkpointer:
  """Keep-N, async trainer checkpoints under `directory`."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    # Local paths or URIs that orbax understands (gs://... on TPU pods: every host must see them).
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True),
        item_handlers={STATE: ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_iterator, meta: dict[str, Any], *, force: bool = False) -> bool:
    items = {STATE: ocp.args.StandardSave(state), "data": grain.checkpoint.CheckpointSave(data_iterator),
             "meta": ocp.args.JsonSave(meta)}
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: dict, data_iterator=None) -> tuple[dict, dict]:
    """(state, meta) of `step`; the data iterator, if given, is set to its saved position."""
    items = {STATE: ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out[STATE], out["meta"]

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
