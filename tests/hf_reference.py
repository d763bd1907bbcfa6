"""Shared helpers for tests against the `transformers` PyTorch reference (test-only: imports torch)."""
from __future__ import annotations

import numpy as np
import torch
import transformers
from PIL import Image

from zwz_jax.data import processor
from zwz_jax.models import convert
from zwz_jax.models.qwen2_5_vl import ModelConfig


def hf_model(model_cfg: ModelConfig, seed: int = 0) -> transformers.Qwen2_5_VLForConditionalGeneration:
  """A tiny random HF model whose every weight (norms and biases too) is non-trivial."""
  torch.manual_seed(seed)
  hf_cfg = transformers.Qwen2_5_VLConfig(**convert.hf_config_dict(model_cfg))
  model = transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.05 * torch.randn_like(p))
  return model


def images(rng: np.random.Generator, sizes) -> list[Image.Image]:
  """Noisy images with a few solid shapes, one per (width, height)."""
  out = []
  for w, h in sizes:
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[h // 4:h // 2, w // 3:w // 2] = rng.integers(0, 256, 3)
    out.append(Image.fromarray(arr))
  return out


def example(config, imgs, text_ids: list[list[int]]) -> dict:
  """Token ids with the images interleaved: text_ids[0] <img0> text_ids[1] <img1> ... text_ids[-1]."""
  m, v = config.model, config.model.vision
  pixels, grids = [], []
  for img in imgs:
    px, grid = processor.preprocess_image(
        img, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
        min_pixels=config.processor.min_pixels, max_pixels=config.processor.max_pixels,
        image_mean=config.processor.image_mean, image_std=config.processor.image_std)
    pixels.append(px)
    grids.append(grid)
  ids = list(text_ids[0])
  for grid, text in zip(grids, text_ids[1:]):
    n = int(np.prod(grid)) // v.spatial_merge_size**2
    ids += [m.vision_start_token_id] + [m.image_token_id] * n + [m.vision_end_token_id] + list(text)
  ids = np.asarray(ids, np.int32)
  positions, _ = processor.mrope_positions(ids, grids, image_token_id=m.image_token_id,
                                           merge_size=v.spatial_merge_size)
  return {"input_ids": ids, "positions": positions, "pixel_values": np.concatenate(pixels),
          "grid_thw": np.stack(grids)}


def rel_err(ours, ref) -> float:
  """max |ours - ref| / max |ref|: relative error at the scale of the tensor."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))
