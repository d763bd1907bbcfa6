"""Qwen3-VL in Flax NNX, numerically equal to `transformers`' `Qwen3VLForConditionalGeneration`.

What differs from Qwen2.5-VL (`zwz_jax.models.qwen2_5_vl`; both share `zwz_jax.models.layers` and
the decoder loop of `zwz_jax.models.vlm`):
  vision  16 px patches with a bias; a learned 48x48 position table, bilinearly resampled to each
          image's patch grid and added to the patch embeddings (beside the 2D rotary embedding);
          LayerNorm and a GELU(tanh) MLP with biases; full attention in every block (no windows);
          DeepStack: the outputs of a few intermediate blocks go through their own patch mergers.
  text    Qwen3 decoder: no q/k/v biases, RMSNorm on each query and key head, explicit head_dim,
          interleaved M-RoPE (t, h, w, t, h, w, ... frequencies); the DeepStack features are added
          to the image tokens' hidden states after the first decoder layers.

Batches use the same layout as Qwen2.5-VL (`zwz_jax.data.batch`) with a "window" of one merged
token (`VisionConfig.window_size` = patch_size * spatial_merge_size): the patches stay in the
processor's merge-block order, unpadded, and every block attends over the whole image.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from zwz_jax.models import vlm
from zwz_jax.models.layers import LayerNorm, PatchMerger, VisionBlock, dense, param, vision_rope, zeros
from zwz_jax.models.scan import run_layers, runs
from zwz_jax.sharding import constrain, constrain_residual


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(vlm.VisionTowerConfig):
  deepstack_visual_indexes: tuple[int, ...]
  patch_size: int = 16
  num_position_embeddings: int = 2304
  layer_norm_eps: float = 1e-6

  @property
  def window_size(self) -> int:
    """Batch layout only: a "window" of one merged token keeps the processor's patch order."""
    return self.patch_size * self.spatial_merge_size

  def matmul_flops(self, grid, window_patches: int | None = None) -> float:
    """Forward matmul FLOPs of the tower on one (t, h, w) patch grid; full attention in every block
    (window_patches, a Qwen2.5-VL notion, is ignored)."""
    del window_patches
    tt, h, w = grid
    p, e, m = tt * h * w, self.hidden_size, self.intermediate_size
    mergers = 1 + len(self.deepstack_visual_indexes)
    return (2 * p * self.patch_dim * e + self.depth * 2 * p * (4 * e * e + 2 * e * m)
            + self.depth * 4 * p * (p // tt) * e
            + mergers * 2 * (p // self.merge_unit) * (self.merge_unit * e) * (self.merge_unit * e + self.out_hidden_size))

  @property
  def position_grid(self) -> int:
    """Side of the square learned position table."""
    return int(round(self.num_position_embeddings**0.5))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(vlm.DecoderConfig):
  head_dim: int
  rope_theta: float = 5000000.0
  max_position_embeddings: int = 262144
  attention_bias: bool = False
  qk_norm: ClassVar[bool] = True
  mrope_interleaved: ClassVar[bool] = True

  @property
  def o_bias(self) -> bool:  # Qwen3's attention_bias covers the output projection too
    return self.attention_bias


@dataclasses.dataclass(frozen=True)
class ModelConfig(vlm.ModelConfig):
  vision: VisionConfig
  text: TextConfig
  vision_cls: ClassVar[type] = VisionConfig
  text_cls: ClassVar[type] = TextConfig

  def family_checks(self) -> list[tuple[bool, str]]:
    v, t = self.vision, self.text
    ds = v.deepstack_visual_indexes
    return [
        (v.position_grid**2 == v.num_position_embeddings,
         "vision.num_position_embeddings must be a square (a side x side learned grid)"),
        (all(0 <= i < v.depth for i in ds), "vision.deepstack_visual_indexes must be block indices below vision.depth"),
        (len(ds) < t.num_layers, "text.num_layers must exceed the number of DeepStack features (one per early layer)"),
        (3 * max(t.mrope_section[1:]) <= sum(t.mrope_section),
         "text.mrope_section: interleaved height/width sections must fit in head_dim/2 frequencies"),
    ]


class VisionMLP(nnx.Module):
  """GELU (tanh) MLP with biases."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    e, m, pdt = cfg.vision.hidden_size, cfg.vision.intermediate_size, cfg.param_dtype
    self.fc1_kernel = param(rngs, (e, m), ("vision_embed", "vision_mlp"), pdt)
    self.fc1_bias = zeros((m,), ("vision_mlp",), pdt)
    self.fc2_kernel = param(rngs, (m, e), ("vision_mlp", "vision_embed"), pdt)
    self.fc2_bias = zeros((e,), ("vision_embed",), pdt)
    self.dtype = cfg.dtype

  def __call__(self, x):
    dt = self.dtype
    h = jax.nn.gelu(dense(x, self.fc1_kernel[...].astype(dt)) + self.fc1_bias[...].astype(dt), approximate=True)
    return dense(h, self.fc2_kernel[...].astype(dt)) + self.fc2_bias[...].astype(dt)


def position_interpolation(positions, segment_ids, side: int):
  """Bilinear (align_corners) taps into the side x side learned position table for every patch.

  positions (B, P, 2): (row, col) of each patch in its image's patch grid; the grid's size is one
  more than the largest row and column among the patches of the same image (segment). Returns
  indices (B, P, 4) into the flattened table and their weights (B, P, 4), float32, in the order
  of transformers' get_vision_interpolation_indices_and_weights.
  """
  p = positions.shape[1]
  seg = jnp.maximum(segment_ids, 0)
  # num_segments = P + 1 bounds the ids (one per frame, 0 = padding) without a data-dependent shape.
  grid_max = jax.vmap(lambda x, s: jax.ops.segment_max(x, s, num_segments=p + 1))(positions, seg)
  size = jnp.take_along_axis(grid_max, seg[..., None], axis=1) + 1  # (B, P, 2): (h, w) of the image

  def taps(index, n):
    src = index.astype(jnp.float32) * (side - 1) / jnp.maximum(n - 1, 1).astype(jnp.float32)
    floor = jnp.floor(src)
    offsets = jnp.arange(2, dtype=jnp.float32)
    tap = jnp.clip(floor[..., None].astype(jnp.int32) + jnp.arange(2), 0, side - 1)
    weight = jnp.maximum(1 - jnp.abs(src[..., None] - floor[..., None] - offsets), 0)
    return tap, weight

  h_tap, h_w = taps(positions[..., 0], size[..., 0])
  w_tap, w_w = taps(positions[..., 1], size[..., 1])
  index = (h_tap[..., :, None] * side + w_tap[..., None, :]).reshape(*positions.shape[:2], 4)
  weight = (h_w[..., :, None] * w_w[..., None, :]).reshape(*positions.shape[:2], 4)
  return index, weight


class VisionTower(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    v, pdt = cfg.vision, cfg.param_dtype
    self.cfg = v
    self.dtype = cfg.dtype
    self.remat = cfg.remat
    self.scan = cfg.scan_layers
    self.patch_kernel = param(rngs, (v.patch_dim, v.hidden_size), ("vision_patch", "vision_embed"), pdt)
    self.patch_bias = zeros((v.hidden_size,), ("vision_embed",), pdt)
    self.pos_embed = param(rngs, (v.num_position_embeddings, v.hidden_size), ("vision_pos", "vision_embed"), pdt)
    norm = functools.partial(LayerNorm, eps=v.layer_norm_eps, param_dtype=pdt)
    self.blocks = nnx.List([VisionBlock(cfg, rngs, norm=norm, mlp=VisionMLP) for _ in range(v.depth)])
    self.merger = PatchMerger(cfg, rngs, norm=norm)
    self.deepstack_mergers = nnx.List([PatchMerger(cfg, rngs, norm=norm, postshuffle=True)
                                       for _ in v.deepstack_visual_indexes])

  def __call__(self, pixel_values, positions, segment_ids):
    """(B, P, patch_dim) patches in merge-block order -> (merged tokens (B, P / 4, out_hidden),
    one DeepStack feature of the same shape per `deepstack_visual_indexes`)."""
    cfg, dt = self.cfg, self.dtype
    if pixel_values.shape[1] % cfg.merge_unit:
      raise ValueError(f"vision: {pixel_values.shape[1]} patches per example is not a multiple of "
                       f"{cfg.merge_unit}; build batches with zwz_jax.data.batch")
    x = dense(pixel_values.astype(dt), self.patch_kernel[...].astype(dt)) + self.patch_bias[...].astype(dt)
    index, weight = position_interpolation(positions, segment_ids, cfg.position_grid)
    table = constrain(self.pos_embed[...], (None, None))  # small; gathered whole on every device
    pos = jnp.sum(jnp.take(table, index, axis=0) * weight[..., None].astype(table.dtype), axis=2)
    x = constrain_residual(x + pos.astype(dt))
    cos, sin = vision_rope(positions, cfg.head_dim, cfg.rope_theta)

    def body(blk, x, _):
      return constrain_residual(blk(x, cos, sin, segment_ids)), None

    # One scan per run of blocks up to a DeepStack tap.
    taps = cfg.deepstack_visual_indexes
    deepstack = []
    for start, stop in runs(cfg.depth, [i + 1 for i in taps]):
      x, _ = run_layers(self.blocks[start:stop], body, x, scan=self.scan, remat=self.remat)
      if stop - 1 in taps:
        deepstack.append(self.deepstack_mergers[taps.index(stop - 1)](x))
    return self.merger(x), deepstack


class Qwen3_VL(vlm.VisionLanguageModel):
  """Qwen3-VL for conditional generation: the vision tower above, the Qwen3 decoder, LM head."""

  vision_tower_cls = VisionTower
