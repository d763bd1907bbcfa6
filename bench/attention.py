"""Our attention op (model.attention=auto) vs PyTorch's scaled_dot_product_attention as `transformers`
calls it, on the students' two long attentions, forward and forward + backward, one run.

  python -m bench.attention [--repeats=5]

Cases, at Qwen2.5-VL-7B's head shapes: the vision tower's full attention over two images in one
example (transformers runs SDPA once per image, split by cu_seqlens; we run one call with a segment
id per image) and the text decoder's causal attention over one sequence (SDPA with is_causal; ours
with segment ids and the causal rule). On a GPU both sides take bfloat16 at the lengths of a
high-resolution example (auto = cuDNN there; SDPA picks its flash kernel); on a CPU float32 at a
quarter of the length (auto = chunked or dense by size; SDPA its CPU flash kernel). Prints the median
times, their ratio (torch / ours: >1 means we are faster) and the outputs' agreement.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from bench import timing
from zwz_jax.models import attention as attention_lib
from zwz_jax.models.vlm import VisionTowerConfig

# name -> (segment lengths in one example (vision: patches per image; text: one sequence), query
# heads, KV heads, head size, causal, the call's max_runs as the model passes it: vision.max_images
# + 1 for the vision tower, 3 for the decoder). Qwen2.5-VL-7B: vision 16 heads of 80, text 28 heads
# over 4 KV heads of 128.
CASES = {
    "vision full attention": ((8192, 4096), 16, 16, 80, False, VisionTowerConfig.max_images + 1),
    "text causal": ((8192,), 28, 4, 128, True, 3),
}
CPU_SHRINK = 4


def run_case(name, lengths, heads, kv_heads, d, causal, max_runs, repeats, json_path, gpu: bool):
  lengths = lengths if gpu else tuple(n // CPU_SHRINK for n in lengths)
  n = sum(lengths)
  jdtype, tdtype = (jnp.bfloat16, torch.bfloat16) if gpu else (jnp.float32, torch.float32)
  device = timing.torch_device()
  rng = np.random.default_rng(0)
  q, k, v, cot = (rng.normal(size=(1, n, h, d)).astype(np.float32) for h in (heads, kv_heads, kv_heads, heads))
  seg = np.repeat(np.arange(1, len(lengths) + 1, dtype=np.int32), lengths)[None]

  g = heads // kv_heads
  jq, jk, jv, jc = (jnp.asarray(x, jdtype) for x in (q, k, v, cot))
  jseg = jnp.asarray(seg)

  def ours(q, k, v):
    out = attention_lib.attend(q.reshape(1, n, kv_heads, g, d), k, v, jseg, jseg, causal=causal, max_runs=max_runs)
    return out.reshape(1, n, heads, d)

  fwd = jax.jit(ours)
  train = jax.jit(lambda q, k, v, c: jax.vjp(ours, q, k, v)[1](c))
  backend = attention_lib.resolve("auto", n, n, jdtype, d)
  backend += " packed" if backend == "cudnn" and max_runs else ""

  # transformers: (B, H, T, D); vision full attention split per image (cu_seqlens), text one causal call.
  tq, tk, tv, tc = (torch.tensor(x, dtype=tdtype, device=device).transpose(1, 2).contiguous() for x in (q, k, v, cot))
  for t in (tq, tk, tv):
    t.requires_grad_(True)
  bounds = np.cumsum((0,) + lengths)

  def reference():
    parts = [F.scaled_dot_product_attention(tq[:, :, a:b], tk[:, :, a:b], tv[:, :, a:b], is_causal=causal,
                                            enable_gqa=g > 1) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=2)

  def reference_train():
    tq.grad = tk.grad = tv.grad = None
    (reference() * tc).sum().backward()
    return tq.grad

  ref_out = reference().detach().float().transpose(1, 2).cpu().numpy()
  our_out = np.asarray(fwd(jq, jk, jv).astype(jnp.float32))
  err = np.abs(our_out - ref_out).max() / np.abs(ref_out).max()
  for what, ours_fn, ref_fn in (
      ("forward", lambda: fwd(jq, jk, jv).block_until_ready(), reference),
      ("forward + backward", lambda: jax.block_until_ready(train(jq, jk, jv, jc)), reference_train)):
    if what == "forward":
      with torch.inference_mode():
        ours_t, ref_t = timing.paired(ours_fn, timing.torch_synced(ref_fn), repeats, warmup=1)
    else:
      ours_t, ref_t = timing.paired(ours_fn, timing.torch_synced(ref_fn), repeats, warmup=1)
    print(f"{name:22s} {'x'.join(map(str, lengths)):>10s} tokens {heads}/{kv_heads} heads of {d} "
          f"{jnp.dtype(jdtype).name:8s} {what:18s} | ours ({backend}) {ours_t * 1e3:8.2f} ms  "
          f"torch SDPA {ref_t * 1e3:8.2f} ms  torch/ours {ref_t / ours_t:5.2f}x | out rel err {err:.1e}", flush=True)
    timing.emit(json_path, bench="attention", case=name,
                what=f"{what}, {'+'.join(map(str, lengths))} tokens, {jnp.dtype(jdtype).name}",
                ours=f"{ours_t * 1e3:.1f} ms ({backend})", reference=f"{ref_t * 1e3:.1f} ms (SDPA)",
                ratio=ref_t / ours_t, meaning="torch / ours time", check=f"output rel err {err:.0e}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  timing.add_json_flag(parser)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.set_num_threads(os.cpu_count() or 1)
  gpu = timing.torch_device() == "cuda"
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, torch {torch.__version__} "
        f"({'cuda' if gpu else f'{torch.get_num_threads()} threads'}); times are medians of --repeats runs")
  for name, case in CASES.items():
    run_case(name, *case, args.repeats, args.json, gpu)


if __name__ == "__main__":
  main()
