"""Qwen3-VL in Flax NNX, numerically equal to `transformers`' `Qwen3VLForConditionalGeneration`.

What differs from Qwen2.5-VL (`zwz_jax.models.qwen2_5_vl`, whose decoder loop, KV cache, logits and
attention this module shares):
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
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from zwz_jax.models import attention as attention_lib
from zwz_jax.models import qwen2_5_vl as base
from zwz_jax.models.qwen2_5_vl import REMAT_POLICIES, DecoderLayer, RMSNorm, VisionAttention, _param, _zeros
from zwz_jax.models.scan import run_layers, runs
from zwz_jax.sharding import constrain


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(base.VisionTowerConfig):
  deepstack_visual_indexes: tuple[int, ...]
  patch_size: int = 16
  num_position_embeddings: int = 2304
  layer_norm_eps: float = 1e-6

  @property
  def window_size(self) -> int:
    """Batch layout only: a "window" of one merged token keeps the processor's patch order."""
    return self.patch_size * self.spatial_merge_size

  @property
  def window_patches(self) -> int:
    return self.merge_unit

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
class TextConfig(base.DecoderConfig):
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
class ModelConfig(base.ModelConfig):
  """Qwen2.5-VL's ModelConfig (fields, `from_config`) with Qwen3-VL's vision and text sections."""
  vision: VisionConfig
  text: TextConfig
  vision_cls: ClassVar[type] = VisionConfig
  text_cls: ClassVar[type] = TextConfig

  def validate(self) -> None:
    v, t = self.vision, self.text
    ds = v.deepstack_visual_indexes
    checks = [
        (v.hidden_size % v.num_heads == 0, "vision.hidden_size must be divisible by vision.num_heads"),
        (v.head_dim % 4 == 0, "vision head_dim must be divisible by 4 (2D rotary)"),
        (v.position_grid**2 == v.num_position_embeddings,
         "vision.num_position_embeddings must be a square (a side x side learned grid)"),
        (all(0 <= i < v.depth for i in ds), "vision.deepstack_visual_indexes must be block indices below vision.depth"),
        (len(ds) < t.num_layers, "text.num_layers must exceed the number of DeepStack features (one per early layer)"),
        (t.num_heads % t.num_kv_heads == 0, "text.num_heads must be divisible by text.num_kv_heads"),
        (len(t.mrope_section) == 3 and 2 * sum(t.mrope_section) == t.head_dim,
         f"text.mrope_section {t.mrope_section} must be 3 sections summing to head_dim/2 = {t.head_dim // 2}"),
        (3 * max(t.mrope_section[1:]) <= sum(t.mrope_section),
         "text.mrope_section: interleaved height/width sections must fit in head_dim/2 frequencies"),
        (self.remat in REMAT_POLICIES, f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)}"),
        (self.attention in attention_lib.BACKENDS,
         f"attention {self.attention!r} is not one of {list(attention_lib.BACKENDS)}"),
        (self.attention_block > 0, f"attention_block must be positive, got {self.attention_block}"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"model config: {msg}")


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm: statistics in float32, scale and bias."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class VisionMLP(nnx.Module):

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs):
    e, m = cfg.hidden_size, cfg.intermediate_size
    self.fc1_kernel = _param(rngs, (e, m), ("vision_embed", "vision_mlp"), param_dtype)
    self.fc1_bias = _zeros((m,), ("vision_mlp",), param_dtype)
    self.fc2_kernel = _param(rngs, (m, e), ("vision_mlp", "vision_embed"), param_dtype)
    self.fc2_bias = _zeros((e,), ("vision_embed",), param_dtype)
    self.dtype = dtype

  def __call__(self, x):
    dt = self.dtype
    h = jax.nn.gelu(x @ self.fc1_kernel[...].astype(dt) + self.fc1_bias[...].astype(dt), approximate=True)
    return h @ self.fc2_kernel[...].astype(dt) + self.fc2_bias[...].astype(dt)


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs, attention=attention_lib.Attention()):
    self.norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype)
    self.attn = VisionAttention(cfg, dtype, param_dtype, rngs, attention)
    self.norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype)
    self.mlp = VisionMLP(cfg, dtype, param_dtype, rngs)

  def __call__(self, x, cos, sin, segment_ids):
    x = x + self.attn(self.norm1(x), cos, sin, segment_ids, None)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """Each 2x2 group of patches -> one LLM token: LayerNorm, then a GELU MLP.

  The final merger normalises each patch before the 2x2 concatenation; the DeepStack mergers
  (`postshuffle`) normalise the concatenated group.
  """

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs, *, postshuffle: bool):
    merged = cfg.hidden_size * cfg.merge_unit
    self.postshuffle = postshuffle
    self.norm = LayerNorm(merged if postshuffle else cfg.hidden_size, cfg.layer_norm_eps, param_dtype)
    self.fc1_kernel = _param(rngs, (merged, merged), ("merger_in", "merger_hidden"), param_dtype)
    self.fc1_bias = _zeros((merged,), ("merger_hidden",), param_dtype)
    self.fc2_kernel = _param(rngs, (merged, cfg.out_hidden_size), ("merger_hidden", "embed"), param_dtype)
    self.fc2_bias = _zeros((cfg.out_hidden_size,), ("embed",), param_dtype)
    self.merge_unit = cfg.merge_unit
    self.dtype = dtype

  def __call__(self, x):
    dt = self.dtype
    b, p, e = x.shape
    if self.postshuffle:
      x = self.norm(x.reshape(b, p // self.merge_unit, e * self.merge_unit))
    else:
      x = self.norm(x).reshape(b, p // self.merge_unit, e * self.merge_unit)
    x = jax.nn.gelu(x @ self.fc1_kernel[...].astype(dt) + self.fc1_bias[...].astype(dt), approximate=False)
    return x @ self.fc2_kernel[...].astype(dt) + self.fc2_bias[...].astype(dt)


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

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs, remat: str = "none",
               attention=attention_lib.Attention(), scan: bool = False):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    self.scan = scan
    self.patch_kernel = _param(rngs, (cfg.patch_dim, cfg.hidden_size), ("vision_patch", "vision_embed"),
                               param_dtype)
    self.patch_bias = _zeros((cfg.hidden_size,), ("vision_embed",), param_dtype)
    self.pos_embed = _param(rngs, (cfg.num_position_embeddings, cfg.hidden_size), ("vision_pos", "vision_embed"),
                            param_dtype)
    self.blocks = nnx.List([VisionBlock(cfg, dtype, param_dtype, rngs, attention) for _ in range(cfg.depth)])
    self.merger = PatchMerger(cfg, dtype, param_dtype, rngs, postshuffle=False)
    self.deepstack_mergers = nnx.List([PatchMerger(cfg, dtype, param_dtype, rngs, postshuffle=True)
                                       for _ in cfg.deepstack_visual_indexes])

  def __call__(self, pixel_values, positions, segment_ids):
    """(B, P, patch_dim) patches in merge-block order -> (merged tokens (B, P / 4, out_hidden),
    one DeepStack feature of the same shape per `deepstack_visual_indexes`)."""
    cfg, dt = self.cfg, self.dtype
    if pixel_values.shape[1] % cfg.merge_unit:
      raise ValueError(f"vision: {pixel_values.shape[1]} patches per example is not a multiple of "
                       f"{cfg.merge_unit}; build batches with zwz_jax.data.batch")
    x = pixel_values.astype(dt) @ self.patch_kernel[...].astype(dt) + self.patch_bias[...].astype(dt)
    index, weight = position_interpolation(positions, segment_ids, cfg.position_grid)
    table = constrain(self.pos_embed[...], (None, None))  # small; gathered whole on every device
    pos = jnp.sum(jnp.take(table, index, axis=0) * weight[..., None].astype(table.dtype), axis=2)
    x = constrain(x + pos.astype(dt), ("act_batch", "act_length", "act_embed"))
    cos, sin = base.vision_rope(positions, cfg.head_dim, cfg.rope_theta)

    def body(blk, x, _):
      return constrain(blk(x, cos, sin, segment_ids), ("act_batch", "act_length", "act_embed")), None

    # One scan per run of blocks up to a DeepStack tap.
    taps = cfg.deepstack_visual_indexes
    deepstack = []
    for start, stop in runs(cfg.depth, [i + 1 for i in taps]):
      x, _ = run_layers(self.blocks[start:stop], body, x, scan=self.scan, remat=self.remat)
      if stop - 1 in taps:
        deepstack.append(self.deepstack_mergers[taps.index(stop - 1)](x))
    return self.merger(x), deepstack


class Qwen3_VL(base.Qwen2_5_VL):
  """Qwen3-VL for conditional generation: the vision tower above, the Qwen3 decoder, LM head."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):  # pylint: disable=super-init-not-called
    self.cfg = cfg
    t, dt, pdt = cfg.text, cfg.dtype, cfg.param_dtype
    self.visual = VisionTower(cfg.vision, dt, pdt, rngs, cfg.remat, cfg.attention_op, cfg.scan_layers)
    self.embed = _param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), pdt)
    self.layers = nnx.List([DecoderLayer(t, dt, pdt, rngs, cfg.attention_op) for _ in range(t.num_layers)])
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, pdt)
    if not t.tie_word_embeddings:
      self.lm_head = _param(rngs, (t.hidden_size, t.vocab_size), ("embed", "vocab"), pdt)

  def encode_images(self, pixel_values, vision_positions, vision_segment_ids):
    return self.visual(pixel_values, vision_positions, vision_segment_ids)

