"""Our batched KV-cache decode vs `transformers` generate: same weights, same prompts, greedy, one run.

  python -m bench.generate [--new_tokens=32] [--repeats=3]

For each config (tiny, small; the model overrides of bench/forward.py) a batch of 4 left-padded
prompts, each with its own image and text length, decodes `new_tokens` tokens on both sides
(min_new_tokens forces transformers to the same count). Prints generated tokens/s for both, end to
end (prefill with the images included) and for the decode alone (the end-to-end time minus that of
a one-token generate), their ratios (ours / torch: >1 means we are faster), our one-off compile
time (kept out of every rate), and whether the two sides generated the same tokens, so the rates
compare the same work.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from bench import timing
from bench.forward import CASES
from tests import hf_reference as ref
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.generate import sampler
from zwz_jax.models import convert
from zwz_jax.models.qwen2_5_vl import ModelConfig
from zwz_jax.sharding import make_mesh

BATCH = 4
SCALES = (1.0, 0.75, 0.5, 0.9)  # per-prompt image size (of the case's) and text length: rows differ


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def run_case(name, overrides, sizes, n_text, new_tokens, repeats, json_path=""):
  w, h = sizes[0]
  # Keep the case's image resolution (the tiny processor would shrink a 448x448 image).
  config = load_config("configs/tiny.py", overrides + [f"processor.max_pixels={w * h}"])
  cfg = ModelConfig.from_config(config.model)
  hf = ref.hf_model(cfg, seed=0)  # non-trivial norms: greedy argmax is not decided by float noise
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    ours = convert.load_hf_state(cfg, d, make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  device = timing.torch_device()
  hf.to(device)

  rng = np.random.default_rng(0)
  exs = []
  for s in SCALES[:BATCH]:
    img = ref.images(rng, [(max(28, int(w * s)), max(28, int(h * s)))])
    half = max(1, int(n_text * s) // 2)
    exs.append(ref.example(config, img, [list(rng.integers(0, 400, half)), list(rng.integers(0, 400, half))]))
  v = cfg.vision
  lays = [batching.layout_vision(e["pixel_values"], e["grid_thw"], v) for e in exs]
  batch = batching.build_batch(exs, vision_cfg=v, image_token_id=cfg.image_token_id,
                               max_tokens=max(len(e["input_ids"]) for e in exs),
                               max_patches=_round_up(max(len(l["patches"]) for l in lays), v.window_patches),
                               pad_side="left")
  ids = torch.as_tensor(batch["input_ids"]).long()
  hf_inputs = dict(input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
                   pixel_values=torch.as_tensor(np.concatenate([e["pixel_values"] for e in exs])),
                   image_grid_thw=torch.as_tensor(np.concatenate([e["grid_thw"] for e in exs])),
                   mm_token_type_ids=(ids == cfg.image_token_id).int())
  hf_inputs = {k: t.to(device) for k, t in hf_inputs.items()} | dict(do_sample=False, pad_token_id=0)
  ours_t, hf_t, compile_s = {}, {}, 0.0
  generate = sampler.Sampler(ours)  # split once, as the evaluator holds it
  # One new token times the prefill; the difference to `new_tokens` is the decode alone.
  for n in (1, new_tokens):
    scfg = sampler.SamplingConfig(max_new_tokens=n)
    t0 = time.perf_counter()
    ours_tokens, _ = generate(batch, scfg)
    first = time.perf_counter() - t0
    with torch.inference_mode():
      hf_tokens = hf.generate(**hf_inputs, max_new_tokens=n, min_new_tokens=n)[:, ids.shape[1]:].cpu().numpy()
      ours_t[n], hf_t[n] = timing.paired(
          lambda: generate(batch, scfg),
          timing.torch_synced(lambda: hf.generate(**hf_inputs, max_new_tokens=n, min_new_tokens=n)), repeats)
    compile_s += first - ours_t[n]

  differ = int((ours_tokens != hf_tokens).any(axis=1).sum())
  n_params = sum(p.numel() for p in hf.parameters())
  gen, dec = BATCH * new_tokens, BATCH * (new_tokens - 1)
  o, t = ours_t[new_tokens], hf_t[new_tokens]
  od, td = o - ours_t[1], t - hf_t[1]
  # Decode time is the difference of two medians: under a tenth of the total it is timer noise.
  resolved = od > 0.1 * o and td > 0.1 * t
  if resolved:
    decode = f"decode only: ours {dec / od:7.1f} tok/s  torch {dec / td:7.1f} tok/s  ours/torch {td / od:5.2f}x"
  else:
    decode = "decode only: below timer noise at this size"
  print(f"{name:6s} {n_params / 1e6:6.2f}M  {BATCH} x {batch['input_ids'].shape[1]} prompt tokens +{new_tokens} | "
        f"end to end: ours {gen / o:7.1f} tok/s ({o * 1e3:6.0f} ms)  torch {gen / t:7.1f} tok/s ({t * 1e3:6.0f} ms)"
        f"  ours/torch {t / o:5.2f}x | prefill: ours {ours_t[1] * 1e3:6.0f} ms  torch {hf_t[1] * 1e3:6.0f} ms | "
        f"{decode} | "
        f"our compile {compile_s:4.1f} s | same tokens: {'yes' if not differ else f'NO ({differ} rows differ)'}")
  same = "same tokens" if not differ else f"{differ} rows differ"
  timing.emit(json_path, bench="generate", case=name, what=f"greedy generation, {BATCH} x {new_tokens} tokens",
              ours=f"{gen / o:.0f} tok/s", reference=f"{gen / t:.0f} tok/s", ratio=t / o,
              meaning="ours / torch tokens/s", check=same)
  timing.emit(json_path, bench="generate", case=name, what=f"prefill, {BATCH} x {batch['input_ids'].shape[1]} "
              "prompt tokens (generating one)", ours=f"{ours_t[1] * 1e3:.0f} ms", reference=f"{hf_t[1] * 1e3:.0f} ms",
              ratio=hf_t[1] / ours_t[1], meaning="torch / ours time", check=same)
  if resolved:
    timing.emit(json_path, bench="generate", case=name, what="decode only (prefill subtracted)",
                ours=f"{dec / od:.0f} tok/s", reference=f"{dec / td:.0f} tok/s", ratio=td / od,
                meaning="ours / torch tokens/s", check=same)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  timing.add_json_flag(parser)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  torch.set_num_threads(os.cpu_count() or 1)
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); greedy, times are medians of --repeats runs")
  for name, (overrides, sizes, n_text) in CASES.items():
    run_case(name, overrides, sizes, n_text, args.new_tokens, args.repeats, args.json)


if __name__ == "__main__":
  main()
