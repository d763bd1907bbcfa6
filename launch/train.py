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

import jax
from absl import app, flags

from zwz_jax import distributed
from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag("configs/tiny.py")
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard logs", required=True)
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from zwz_jax.train import loop
  config = CONFIG.value
  if config.trainer not in loop.TRAINERS:
    raise app.UsageError(f"config key trainer={config.trainer!r} is not one of {loop.TRAINERS}")
  distributed.initialize()
  out = loop.train(config, FLAGS.workdir)
  headline = out["trainer"].source.headline
  if jax.process_index() == 0 and out["metrics"]:
    print(f"done: step {int(out['state']['step'])} {headline} {out['metrics'][headline]:.4f}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
