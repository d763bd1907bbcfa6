"""Analytic FLOPs, peak FLOP/s by device kind, and the metrics writers (stdout, jsonl, TensorBoard)."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm


# Dense bf16 peak FLOP/s per chip (vendor figures). CPUs are measured instead (see `peak_flops`).
# Keys are device_kind prefixes; the longest matching one wins ("TPU v5 lite" before "TPU v5").
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5"
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measured_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a large fp32 matmul on the first device (how CPU peaks are known)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak_flops(device=None) -> float:
  """Per-device peak: the table for accelerators, a measurement for CPUs (cached)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    global _CPU_PEAK
    if _CPU_PEAK is None:
      _CPU_PEAK = measured_matmul_peak()
    return _CPU_PEAK
  kinds = [k for k in PEAK_FLOPS if device.device_kind.startswith(k)]
  return PEAK_FLOPS[max(kinds, key=len)] if kinds else float("nan")


_CPU_PEAK = None


def forward_flops(cfg, grids, seq_len: int, *, window_patches: int | None = None) -> float:
  """Matmul FLOPs of one forward pass of one example.

  grids: (t, h, w) patch grids of its images; seq_len: text tokens. Window attention (Qwen2.5-VL)
  is counted with `window_patches` keys per query (the padded window size our layout computes).
  """
  t = cfg.text
  flops = sum(cfg.vision.matmul_flops(grid, window_patches) for grid in grids)
  e, hd = t.hidden_size, t.head_dim
  proj = e * (t.num_heads * hd) * 2 + e * (t.num_kv_heads * hd) * 2
  flops += t.num_layers * 2 * seq_len * (proj + 3 * e * t.intermediate_size)
  flops += t.num_layers * 4 * seq_len * seq_len * t.num_heads * hd / 2  # causal: half the square
  flops += 2 * seq_len * e * t.vocab_size
  return flops


def row_forward_flops(cfg, seq_len: int, patches: int, *, window_patches: int | None = None) -> float:
  """Forward FLOPs of one padded row of `seq_len` tokens and `patches` patch slots, as the devices
  compute it (the padding included)."""
  side = int(round(np.sqrt(patches)))  # attention cost only depends on the patch count; any grid works
  grid = (1, side, patches // side) if side * (patches // side) == patches else (1, 1, patches)
  return forward_flops(cfg, [grid], seq_len, window_patches=window_patches)


def batch_train_flops(cfg, batch: dict) -> float:
  """Training FLOPs (forward + backward = 3x forward) of a padded batch, as the devices compute it."""
  b, p = batch["vision_segment_ids"].shape
  return 3 * b * row_forward_flops(cfg, batch["input_ids"].shape[1], p)


class MetricsWriter:
  """Per-step scalars to stdout, <workdir>/metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled and "://" not in workdir:
      # Object stores have no append: metrics files need a local or mounted (e.g. gcsfuse) workdir;
      # with a gs:// workdir checkpoints still go there and metrics go to stdout only.
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard is optional; jsonl and stdout always work
        self._tb = None

  def write(self, step: int, scalars: dict, *, prefix: str = "train", extra: dict | None = None):
    if not self.enabled:
      return
    row = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}, **(extra or {})}
    if self._jsonl:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
    tqdm.tqdm.write(f"[{prefix}] step {step}: {shown}")  # above the loop's progress bar, if any

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _fmt(v) -> str:
  v = float(v)
  return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
