"""Runs a launcher and kills it with a real SIGKILL at a chosen point: fault injection for the resume
tests, kept out of library code (the library only has to survive it).

  python tests/kill_at.py train_steps=5 launch/train.py ARGS...     # after the 5th training step
  python tests/kill_at.py eval_batches=2 launch/eval.py ARGS...     # after 2 batches of predictions
  python tests/kill_at.py gen_images=3 launch/gen_data.py ARGS...   # after 3 images' records

The point is reached by wrapping a library method in this process (a step, a prediction log write, a
chunk writer's add), so the kill lands at the same place on every run, however fast the machine is.
For training, every checkpoint save is waited for, so the checkpoints before the kill are complete.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys

def _kill():
  sys.stdout.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _after_calls(cls, name: str, n: int, *, before: bool = False):
  """Kills the process after the n-th call of cls.name (before the (n + 1)-th with before=True)."""
  original = getattr(cls, name)
  calls = [0]

  def wrapped(self, *args, **kwargs):
    if before and calls[0] == n:
      _kill()
    out = original(self, *args, **kwargs)
    calls[0] += 1
    if not before and calls[0] == n:
      _kill()
    return out

  setattr(cls, name, wrapped)


def _train_steps(n: int) -> None:
  from zwz_jax.train import checkpoint, trainer
  save = checkpoint.Checkpointer.save

  def save_and_wait(self, *args, **kwargs):
    out = save(self, *args, **kwargs)
    self.wait()
    return out

  checkpoint.Checkpointer.save = save_and_wait
  # Before the (n + 1)-th step: step n has been logged and, when due, checkpointed.
  _after_calls(trainer.Trainer, "step", n, before=True)


def _eval_batches(n: int) -> None:
  from zwz_jax.eval import jsonl_log
  _after_calls(jsonl_log.Appender, "write", n)


def _gen_images(n: int) -> None:
  from data_gen import writer
  _after_calls(writer.ChunkWriter, "add", n)


POINTS = {"train_steps": _train_steps, "eval_batches": _eval_batches, "gen_images": _gen_images}


def main() -> None:
  point, _, count = sys.argv[1].partition("=")
  if point not in POINTS or not count.isdigit():
    raise SystemExit(f"usage: kill_at.py {{{'|'.join(POINTS)}}}=N LAUNCHER ARGS...; got {sys.argv[1]!r}")
  POINTS[point](int(count))
  launcher = sys.argv[2]
  sys.argv = [launcher, *sys.argv[3:]]
  runpy.run_path(launcher, run_name="__main__")


if __name__ == "__main__":
  main()
