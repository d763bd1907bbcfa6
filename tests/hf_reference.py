"""Shared helpers for tests against the `transformers` PyTorch reference (test-only: imports torch)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from jax.sharding import NamedSharding
from PIL import Image

from zwz_jax.data import processor
from zwz_jax.data.batch import MODEL_INPUTS
from zwz_jax.models import convert, qwen3_vl
from zwz_jax.data.batch import batch_spec



def hf_model(model_cfg, seed: int = 0) -> transformers.PreTrainedModel:
  """A tiny random HF model of `model_cfg`'s family whose every weight (norms and biases too) is
  non-trivial."""
  torch.manual_seed(seed)
  if isinstance(model_cfg, qwen3_vl.ModelConfig):
    config_cls, model_cls = transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration
  else:
    config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
  model = model_cls(config_cls(**convert.hf_config_dict(model_cfg))).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_scale = name.endswith(".weight") and ("norm" in name or "ln_q" in name)
      if is_scale:
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


def forward(model, batch, mesh=None):
  """Our jitted forward of a `build_batch` batch: (logits, intermediates). With `mesh`, the batch is
  split over (data, fsdp) as training splits it (positions carry the 3 M-RoPE streams first)."""
  arrays = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS}
  fwd = jax.jit(lambda m, b: m(**b, return_hidden=True))
  if mesh is None:
    return fwd(model, arrays)
  arrays = {k: jax.device_put(a, NamedSharding(mesh, batch_spec(k, a.ndim))) for k, a in arrays.items()}
  with jax.set_mesh(mesh):
    return fwd(model, arrays)


def hf_forward(hf, ex, attention_mask=None):
  """HF forward that computes its own M-RoPE ids: logits, per-layer outputs, merged image features,
  and the DeepStack features (Qwen3-VL; an empty list otherwise)."""
  captured = []
  hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
           for layer in hf.model.language_model.layers]
  ids = torch.as_tensor(ex["input_ids"]).long()
  ids = ids[None] if ids.ndim == 1 else ids
  pixels, grids = torch.as_tensor(ex["pixel_values"]), torch.as_tensor(ex["grid_thw"])
  try:
    with torch.no_grad():
      out = hf(input_ids=ids, pixel_values=pixels, image_grid_thw=grids,
               mm_token_type_ids=(ids == hf.config.image_token_id).int(),
               attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask))
      vis = hf.model.get_image_features(pixels, grids)
  finally:
    for h in hooks:
      h.remove()
  deepstack = [torch.cat(f).numpy() for f in getattr(vis, "deepstack_features", None) or []]
  return out.logits.numpy(), [c.numpy() for c in captured], torch.cat(vis.pooler_output).numpy(), deepstack
