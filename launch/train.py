"""Train the student: supervised distillation on the region-grounded records, or GRPO/DAPO RL.

  python launch/train.py --config=configs/tiny.py --workdir=out/train_tiny [--config.a.b=v ...]
  python launch/train.py --config=configs/tiny_grpo.py --workdir=out/grpo_tiny \
      --config.train.init_from=out/train_tiny
  python launch/train.py --config=configs/student_7b.py --workdir=gs://bucket/run \
      --config.data.train="('/data/zwz_records',)" --config.train.init_from=/ckpts/qwen2_5_vl_7b

Run the same command on every host of a pod / every node of a GPU cluster: with --multihost,
jax.distributed.initialize() finds the coordinator from the environment (TPU, SLURM, Open MPI),
or from --coordinator_address/--num_processes/--process_id. Re-running a command resumes from the
latest checkpoint in --workdir (also onto a different mesh); SIGTERM writes a checkpoint and exits.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from zwz_jax.config import load_config, parse_argv  # noqa: E402


def init_distributed(args) -> None:
  if not (args.multihost or args.coordinator_address):
    return
  if args.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
  kwargs = {}
  if args.coordinator_address:
    kwargs = dict(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                  process_id=args.process_id)
  jax.distributed.initialize(**kwargs)


def main(argv):
  config_path, overrides, rest = parse_argv(argv, default_config="configs/tiny.py")
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and TensorBoard logs")
  parser.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize()")
  parser.add_argument("--coordinator_address", default="", help="host:port of process 0 (explicit setup)")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--cpu_collectives", default="", help="'gloo' for multi-process CPU runs")
  args = parser.parse_args(rest)
  config = load_config(config_path, overrides)  # fails on unknown keys before any device work
  from zwz_jax.train import loop
  if config.trainer not in loop.TRAINERS:
    raise SystemExit(f"config key trainer={config.trainer!r} is not one of {loop.TRAINERS}")
  init_distributed(args)
  out = loop.train(config, args.workdir)
  headline = out["trainer"].source.headline
  if jax.process_index() == 0 and out["metrics"]:
    print(f"done: step {int(out['state']['step'])} {headline} {out['metrics'][headline]:.4f}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
