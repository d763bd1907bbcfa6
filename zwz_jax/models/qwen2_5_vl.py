"""Qwen2.5-VL in Flax NNX: the student, numerically equal to `transformers`' implementation.

Vision tower: 3D patch embed (a linear map of the flattened 2x14x14x3 patch), 2D rotary embedding,
window attention with a few full-attention blocks, RMSNorm, SwiGLU, 2x2 patch merger.
Text decoder: Qwen2 (GQA with q/k/v biases, M-RoPE over temporal/height/width ids, RMSNorm, SwiGLU).
Image features replace the `<|image_pad|>` token embeddings.
This module holds what is Qwen2.5-VL's own (its config fields, vision MLP and tower); the layers both
families share are in `zwz_jax.models.layers`, the decoder loop in `zwz_jax.models.vlm`.

Layout of the vision input (built on the host by `zwz_jax.data.batch`): patches of each example are
stored in *window order* and every attention window is padded to the same number of patches
(`window_patches`). Window attention is then a reshape into fixed-size blocks (cost linear in the
number of patches) and full attention a segment-masked attention over the example's patches, with
static shapes throughout. Padding patches have segment id 0 and never reach the text.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

from flax import nnx

from zwz_jax.models import vlm
from zwz_jax.models.layers import PatchMerger, RMSNorm, VisionBlock, dense, param, silu, vision_rope, zeros
from zwz_jax.models.scan import run_layers, runs
from zwz_jax.sharding import constrain_residual


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(vlm.VisionTowerConfig):
  fullatt_block_indexes: tuple[int, ...]
  window_size: int = 112
  rms_norm_eps: float = 1e-6
  tokens_per_second: int = 2

  def matmul_flops(self, grid, window_patches: int | None = None) -> float:
    """Forward matmul FLOPs of the tower on one (t, h, w) patch grid (attention counted with
    `window_patches` keys per query in window blocks, default the unpadded window)."""
    tt, h, w = grid
    p, e, m = tt * h * w, self.hidden_size, self.intermediate_size
    win = window_patches or self.window_patches
    full = len(self.fullatt_block_indexes)
    return (2 * p * self.patch_dim * e + self.depth * 2 * p * (4 * e * e + 3 * e * m)
            + (self.depth - full) * 4 * p * min(win, p) * e + full * 4 * p * (p // tt) * e
            + 2 * (p // self.merge_unit) * (self.merge_unit * e) * (self.merge_unit * e + self.out_hidden_size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(vlm.DecoderConfig):
  # Qwen2: q/k/v biases, no q/k norms, M-RoPE frequencies in contiguous t/h/w sections.
  attention_bias: ClassVar[bool] = True  # on q, k, v
  o_bias: ClassVar[bool] = False
  qk_norm: ClassVar[bool] = False
  mrope_interleaved: ClassVar[bool] = False

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig(vlm.ModelConfig):
  vision: VisionConfig
  text: TextConfig
  vision_cls: ClassVar[type] = VisionConfig
  text_cls: ClassVar[type] = TextConfig

  def family_checks(self) -> list[tuple[bool, str]]:
    v, t = self.vision, self.text
    return [
        (t.hidden_size % t.num_heads == 0, "text.hidden_size must be divisible by text.num_heads"),
        (all(0 <= i < v.depth for i in v.fullatt_block_indexes),
         "vision.fullatt_block_indexes must be block indices below vision.depth"),
        (v.window_size % (v.patch_size * v.spatial_merge_size) == 0,
         "vision.window_size must be a multiple of patch_size * spatial_merge_size"),
    ]


class VisionMLP(nnx.Module):
  """SwiGLU with biases."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    e, m, pdt = cfg.vision.hidden_size, cfg.vision.intermediate_size, cfg.param_dtype
    self.gate_kernel = param(rngs, (e, m), ("vision_embed", "vision_mlp"), pdt)
    self.gate_bias = zeros((m,), ("vision_mlp",), pdt)
    self.up_kernel = param(rngs, (e, m), ("vision_embed", "vision_mlp"), pdt)
    self.up_bias = zeros((m,), ("vision_mlp",), pdt)
    self.down_kernel = param(rngs, (m, e), ("vision_mlp", "vision_embed"), pdt)
    self.down_bias = zeros((e,), ("vision_embed",), pdt)
    self.dtype = cfg.dtype

  def __call__(self, x):
    dt = self.dtype
    gate = dense(x, self.gate_kernel[...].astype(dt)) + self.gate_bias[...].astype(dt)
    up = dense(x, self.up_kernel[...].astype(dt)) + self.up_bias[...].astype(dt)
    return dense(silu(gate) * up, self.down_kernel[...].astype(dt)) + self.down_bias[...].astype(dt)


class VisionTower(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.cfg = v
    self.dtype = cfg.dtype
    self.remat = cfg.remat
    self.scan = cfg.scan_layers
    self.patch_kernel = param(rngs, (v.patch_dim, v.hidden_size), ("vision_patch", "vision_embed"), cfg.param_dtype)
    norm = functools.partial(RMSNorm, eps=v.rms_norm_eps, param_dtype=cfg.param_dtype)
    self.blocks = nnx.List([VisionBlock(cfg, rngs, norm=norm, mlp=VisionMLP) for _ in range(v.depth)])
    # The reference's merger norm has a fixed eps, whatever vision.rms_norm_eps says.
    self.merger = PatchMerger(cfg, rngs, norm=functools.partial(RMSNorm, eps=1e-6, param_dtype=cfg.param_dtype))

  def __call__(self, pixel_values, positions, segment_ids):
    """(B, P, patch_dim) window-ordered patches -> ((B, P / merge_unit, out_hidden) merged tokens,
    no DeepStack features)."""
    cfg = self.cfg
    p = pixel_values.shape[1]
    if p % cfg.window_patches:
      raise ValueError(f"vision: {p} patches per example is not a multiple of the window "
                       f"({cfg.window_patches} patches); build batches with zwz_jax.data.batch")
    x = dense(pixel_values.astype(self.dtype), self.patch_kernel[...].astype(self.dtype))
    x = constrain_residual(x)
    cos, sin = vision_rope(positions, cfg.head_dim, cfg.rope_theta)
    full = set(cfg.fullatt_block_indexes)
    # Runs of window blocks between the full-attention blocks: one scan each.
    cuts = [c for i in full for c in (i, i + 1)]
    for start, stop in runs(cfg.depth, cuts):
      block = None if start in full else cfg.window_patches

      def body(blk, x, _, block=block):
        x = blk(x, cos, sin, segment_ids, block)
        return constrain_residual(x), None

      x, _ = run_layers(self.blocks[start:stop], body, x, scan=self.scan, remat=self.remat)
    return self.merger(x), []


class Qwen2_5_VL(vlm.VisionLanguageModel):
  """Qwen2.5-VL for conditional generation: the vision tower above, the Qwen2 decoder, LM head."""

  vision_tower_cls = VisionTower
