"""Our jitted forward vs the `transformers` PyTorch forward, same weights, same inputs, one run.

  python -m bench.forward [--repeats=10]

For each config (tiny, small) prints median step times, their ratio (torch / ours: >1 means we are
faster), the analytic FLOPs of the forward, and the fraction of this machine's measured matmul peak
each side achieves. Also checks that the two outputs agree, so the figures compare the same math.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from PIL import Image

from bench import timing
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.data import processor
from zwz_jax.models import convert
from zwz_jax.models.qwen2_5_vl import ModelConfig
from zwz_jax.sharding import make_mesh
from zwz_jax.train.metrics import forward_flops

# name -> (overrides of configs/tiny.py, image sizes (w, h), text tokens around the image)
CASES = {
    "tiny": ([], [(224, 224)], 32),
    "small": (["model.vision.depth=8", "model.vision.hidden_size=256", "model.vision.num_heads=4",
               "model.vision.intermediate_size=512", "model.vision.window_size=112",
               "model.vision.fullatt_block_indexes=(3,7)", "model.vision.out_hidden_size=512",
               "model.text.hidden_size=512", "model.text.num_layers=8", "model.text.num_heads=8",
               "model.text.num_kv_heads=4", "model.text.intermediate_size=1536",
               "model.text.mrope_section=(8,12,12)"], [(448, 448)], 128),
}


def run_case(name, overrides, sizes, n_text, repeats, peak, json_path=""):
  config = load_config("configs/tiny.py", overrides)
  cfg = ModelConfig.from_config(config.model)
  torch.manual_seed(0)
  hf = transformers.Qwen2_5_VLForConditionalGeneration(
      transformers.Qwen2_5_VLConfig(**convert.hf_config_dict(cfg))).eval()
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    ours = convert.load_hf_state(cfg, d, make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  device = timing.torch_device()
  hf.to(device)

  rng = np.random.default_rng(0)
  v = cfg.vision
  pixels, grids = [], []
  for w, h in sizes:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    px, grid = processor.preprocess_image(
        Image.fromarray(img), patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
        min_pixels=config.processor.min_pixels, max_pixels=w * h, image_mean=config.processor.image_mean,
        image_std=config.processor.image_std)
    pixels.append(px)
    grids.append(grid)
  ids = list(rng.integers(0, 400, n_text // 2))
  for grid in grids:
    ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (int(np.prod(grid)) // v.merge_unit)
    ids += [cfg.vision_end_token_id]
  ids = np.asarray(ids + list(rng.integers(0, 400, n_text - n_text // 2)), np.int32)
  positions, _ = processor.mrope_positions(ids, grids, image_token_id=cfg.image_token_id,
                                           merge_size=v.spatial_merge_size)
  ex = {"input_ids": ids, "positions": positions, "pixel_values": np.concatenate(pixels),
        "grid_thw": np.stack(grids)}
  win = v.window_patches
  lay = batching.layout_vision(ex["pixel_values"], ex["grid_thw"], v)
  batch = batching.build_batch([ex], vision_cfg=v, image_token_id=cfg.image_token_id,
                               max_tokens=len(ids), max_patches=-(-len(lay["patches"]) // win) * win)
  keys = ("input_ids", "positions", "attention_mask", "pixel_values", "vision_positions",
          "vision_segment_ids", "image_token_index")
  inputs = {k: jnp.asarray(batch[k]) for k in keys}
  fwd = jax.jit(lambda m, b: m(**b))
  ours_logits = np.asarray(fwd(ours, inputs))

  hf_in = dict(input_ids=torch.as_tensor(ids).long()[None], pixel_values=torch.as_tensor(ex["pixel_values"]),
               image_grid_thw=torch.as_tensor(ex["grid_thw"]),
               position_ids=torch.as_tensor(positions).long()[:, None])
  hf_in = {k: t.to(device) for k, t in hf_in.items()}
  with torch.inference_mode():
    hf_logits = hf(**hf_in).logits.cpu().numpy()
    hf(**hf_in)
    ours_t, hf_t = timing.paired(lambda: fwd(ours, inputs).block_until_ready(),
                                 timing.torch_synced(lambda: hf(**hf_in)), repeats)
  err = np.abs(ours_logits - hf_logits).max() / np.abs(hf_logits).max()
  flops = forward_flops(cfg, [tuple(g) for g in grids], len(ids))
  n_params = sum(p.numel() for p in hf.parameters())
  print(f"{name:6s} {n_params / 1e6:7.2f}M  {int(sum(np.prod(g) for g in grids)):5d} patches {len(ids):5d} tokens | "
        f"ours {ours_t * 1e3:8.2f} ms  torch {hf_t * 1e3:8.2f} ms  torch/ours {hf_t / ours_t:5.2f}x | "
        f"{flops / 1e9:7.3f} GFLOP  ours {flops / ours_t / peak:6.1%}  torch {flops / hf_t / peak:6.1%} of peak | "
        f"rel err {err:.1e}")
  timing.emit(json_path, bench="forward", case=name, what=f"forward, {len(ids)} tokens + image",
              ours=f"{ours_t * 1e3:.1f} ms ({flops / ours_t / peak:.0%} of peak)",
              reference=f"{hf_t * 1e3:.1f} ms ({flops / hf_t / peak:.0%} of peak)", ratio=hf_t / ours_t,
              meaning="torch / ours time", check=f"logits rel err {err:.0e}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=10)
  timing.add_json_flag(parser)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  torch.set_num_threads(os.cpu_count() or 1)
  peak = timing.matmul_peak()
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  for name, (overrides, sizes, n_text) in CASES.items():
    run_case(name, overrides, sizes, n_text, args.repeats, peak, args.json)


if __name__ == "__main__":
  main()
