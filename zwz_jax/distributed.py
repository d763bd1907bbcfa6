"""Several processes, one job: the launchers' flags for jax.distributed, and its start.

Run the same command on every host of a pod / every node of a GPU cluster: with --multihost,
jax.distributed.initialize() finds the coordinator from the environment (TPU, SLURM, Open MPI);
or give --coordinator_address, --num_processes and --process_id (and --cpu_collectives=gloo for
CPU processes, as the tests run two on one machine).
"""
from __future__ import annotations

from absl import flags


def define_flags() -> None:
  flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize()")
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (explicit setup)")
  flags.DEFINE_integer("num_processes", 1, "processes in the job (explicit setup)")
  flags.DEFINE_integer("process_id", 0, "this process's index (explicit setup)")
  flags.DEFINE_string("cpu_collectives", "", "'gloo' for multi-process CPU runs")


def initialize() -> None:
  """jax.distributed.initialize() as the flags say; nothing for a single-process run."""
  f = flags.FLAGS
  if not (f.multihost or f.coordinator_address):
    return
  import jax
  if f.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", f.cpu_collectives)
  kwargs = {}
  if f.coordinator_address:
    kwargs = dict(coordinator_address=f.coordinator_address, num_processes=f.num_processes, process_id=f.process_id)
  jax.distributed.initialize(**kwargs)
