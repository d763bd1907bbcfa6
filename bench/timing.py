"""Timers shared by the benches: one way to time, so every ratio is measured the same way."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp


def times(fn: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
  """Wall seconds of `repeats` calls of fn after `warmup` untimed ones. fn must block until its
  work is done (jax.block_until_ready / .item())."""
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def median(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
  """Typical time of a call: what a step costs."""
  return statistics.median(times(fn, repeats, warmup))


def paired(ours: Callable[[], object], reference: Callable[[], object], repeats: int,
           warmup: int = 0) -> tuple[float, float]:
  """Median times of two functions called in turn (ours, reference, ours, ...). A shared machine's
  speed drifts by tens of percent over a minute; timed in turn, both sides see the same drift, so
  their ratio holds where two back-to-back medians would not."""
  for _ in range(warmup):
    ours()
    reference()
  a, b = [], []
  for _ in range(repeats):
    a += times(ours, 1)
    b += times(reference, 1)
  return statistics.median(a), statistics.median(b)


def best(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
  """Fastest call: a peak is what the machine can do, not what it did while busy."""
  return min(times(fn, repeats, warmup))


def torch_device() -> str:
  """Where the PyTorch reference runs: on the GPU when JAX runs on one, so that a ratio compares the
  same hardware. There both sides compute float32 matmuls and convolutions in full float32, as JAX at
  precision "highest" does (cuDNN convolutions would otherwise take TF32)."""
  import torch
  if jax.default_backend() == "gpu" and torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return "cuda"
  return "cpu"


def torch_synced(fn: Callable[[], object]) -> Callable[[], object]:
  """fn, then a wait for the GPU: PyTorch returns before its CUDA kernels end (JAX callers block
  with block_until_ready)."""
  import torch

  def run():
    out = fn()
    if torch.cuda.is_initialized():
      torch.cuda.synchronize()
    return out
  return run


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a large fp32 matmul on this machine: the best of JAX and, when installed, PyTorch on
  the same device (MFU figures divide by this, so neither side is flattered by the other's slower
  BLAS)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  fastest = best(lambda: f(a).block_until_ready(), repeats, warmup=1)
  try:
    import torch
  except ImportError:
    return 2 * n**3 / fastest
  t = torch.ones(n, n, device=torch_device())
  return 2 * n**3 / min(fastest, best(torch_synced(lambda: t @ t), repeats, warmup=1))


def add_json_flag(parser) -> None:
  parser.add_argument("--json", default="", help="also append each result row to this JSON-lines file "
                      "(bench/report.py gathers them into one markdown table)")


def emit(path: str, *, bench: str, case: str, what: str, ours: str, reference: str, ratio: float,
         meaning: str, check: str = "") -> None:
  """One result row: `ratio` is a side-by-side figure from this run (`meaning` says which way is
  better); `check` says whether both sides did the same work (same tokens, matching outputs)."""
  if not path:
    return
  import json
  import os
  row = {"bench": bench, "case": case, "what": what, "ours": ours, "reference": reference,
         "ratio": float(ratio), "meaning": meaning, "check": check,
         "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}", "cores": os.cpu_count()}
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
