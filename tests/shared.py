"""Paths the tests use, and expensive test artefacts (reference runs, generated benchmarks) built once
per test run.

Under pytest-xdist every worker would otherwise build its own copy of a module fixture, and the
suite's slowest runs would happen twice. `shared_dir` builds into a directory of this run's base
temp that all workers see, under a file lock: the first worker to ask builds, the others wait and
reuse the result.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Absolute paths, so tests do not depend on the directory pytest runs from.
CONFIGS = os.path.join(ROOT, "configs")
LAUNCH = os.path.join(ROOT, "launch")
KILL_AT = os.path.join(ROOT, "tests", "kill_at.py")


def shared_dir(tmp_path_factory, name: str, build: Callable[[str], None]) -> str:
  """The path of directory `name`, filled by `build(path)` exactly once in this test run."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # pytest-N/popen-gwK -> pytest-N: this run's, common to its workers
  path, done = base / f"shared-{name}", base / f"shared-{name}.complete"  # the marker stays outside
  with open(base / f"shared-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():  # a build that failed midway is redone, not reused
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(str(path))
      done.touch()
  return str(path)


def free_port() -> int:
  """A free TCP port on loopback, for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
