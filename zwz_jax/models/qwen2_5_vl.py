"""Qwen2.5-VL in Flax NNX: the student, numerically equal to `transformers`' implementation.

Vision tower: 3D patch embed (a linear map of the flattened 2x14x14x3 patch), 2D rotary embedding,
window attention with a few full-attention blocks, RMSNorm, SwiGLU, 2x2 patch merger.
Text decoder: Qwen2 (GQA with q/k/v biases, M-RoPE over temporal/height/width ids, RMSNorm, SwiGLU).
Image features replace the `<|image_pad|>` token embeddings.

Layout of the vision input (built on the host by `zwz_jax.data.batch`): patches of each example are
stored in *window order* and every attention window is padded to the same number of patches
(`window_patches`). Window attention is then a reshape into fixed-size blocks (cost linear in the
number of patches) and full attention a segment-masked attention over the example's patches, with
static shapes throughout. Padding patches have segment id 0 and never reach the text.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zwz_jax.models import attention as attention_lib
from zwz_jax.models.scan import REMAT_POLICIES, run_layers, runs
from zwz_jax.sharding import constrain

_INIT = nnx.initializers.normal(0.02)  # HF's initializer_range


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionTowerConfig:
  """The vision fields every family has; each family's config adds its own (keyword-only)."""
  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(VisionTowerConfig):
  fullatt_block_indexes: tuple[int, ...]
  window_size: int = 112
  rms_norm_eps: float = 1e-6
  tokens_per_second: int = 2

  @property
  def window_patches(self) -> int:
    """Patches per attention window (the window is square, in units of merged tokens)."""
    side = self.window_size // self.patch_size // self.spatial_merge_size * self.spatial_merge_size
    return side * side

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
class DecoderConfig:
  """The text-decoder fields every family has; each family's config adds its own (keyword-only)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mrope_section: tuple[int, ...]
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 128000


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(DecoderConfig):
  # Qwen2: q/k/v biases, no q/k norms, M-RoPE frequencies in contiguous t/h/w sections.
  attention_bias: ClassVar[bool] = True  # on q, k, v
  o_bias: ClassVar[bool] = False
  qk_norm: ClassVar[bool] = False
  mrope_interleaved: ClassVar[bool] = False

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig
  text: TextConfig
  image_token_id: int
  video_token_id: int
  vision_start_token_id: int
  vision_end_token_id: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"  # activation rematerialisation of each block: none | full | dots | dots_no_batch
  attention: str = "auto"  # attention backend, see zwz_jax.models.attention: auto | dense | chunked | splash | cudnn
  attention_block: int = 512  # query / key block of the chunked and splash backends
  scan_layers: bool = True  # one lax.scan per run of identical layers (zwz_jax.models.scan)
  vision_cls: ClassVar[type] = VisionConfig
  text_cls: ClassVar[type] = TextConfig

  @classmethod
  def from_config(cls, model_cfg) -> "ModelConfig":
    """From the `config.model` ConfigDict (see configs/tiny.py); sequences become tuples."""
    tuples = lambda d: {k: tuple(x) if isinstance(x, (list, tuple)) else x for k, x in dict(d).items()}
    cfg = cls(
        vision=cls.vision_cls(**tuples(model_cfg.vision)), text=cls.text_cls(**tuples(model_cfg.text)),
        image_token_id=model_cfg.image_token_id, video_token_id=model_cfg.video_token_id,
        vision_start_token_id=model_cfg.vision_start_token_id,
        vision_end_token_id=model_cfg.vision_end_token_id,
        dtype=jnp.dtype(model_cfg.dtype), param_dtype=jnp.dtype(model_cfg.param_dtype),
        remat=model_cfg.get("remat", "none"), attention=model_cfg.get("attention", "auto"),
        attention_block=int(model_cfg.get("attention_block", 512)),
        scan_layers=bool(model_cfg.get("scan_layers", True)))
    cfg.validate()
    return cfg

  @property
  def attention_op(self) -> attention_lib.Attention:
    return attention_lib.Attention(self.attention, self.attention_block)

  def validate(self) -> None:
    v, t = self.vision, self.text
    checks = [
        (v.hidden_size % v.num_heads == 0, "vision.hidden_size must be divisible by vision.num_heads"),
        (v.head_dim % 4 == 0, "vision head_dim must be divisible by 4 (2D rotary)"),
        (t.hidden_size % t.num_heads == 0, "text.hidden_size must be divisible by text.num_heads"),
        (t.num_heads % t.num_kv_heads == 0, "text.num_heads must be divisible by text.num_kv_heads"),
        (2 * sum(t.mrope_section) == t.head_dim,
         f"text.mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}"),
        (all(0 <= i < v.depth for i in v.fullatt_block_indexes),
         "vision.fullatt_block_indexes must be block indices below vision.depth"),
        (v.window_size % (v.patch_size * v.spatial_merge_size) == 0,
         "vision.window_size must be a multiple of patch_size * spatial_merge_size"),
        (self.remat in REMAT_POLICIES, f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)}"),
        (self.attention in attention_lib.BACKENDS,
         f"attention {self.attention!r} is not one of {list(attention_lib.BACKENDS)}"),
        (self.attention_block > 0, f"attention_block must be positive, got {self.attention_block}"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"model config: {msg}")


def _param(rngs: nnx.Rngs, shape, axes, dtype, init=_INIT) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


def _zeros(shape, axes, dtype) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(dtype) * x32.astype(dtype)


def _rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
  """x: (..., L, heads, D); cos/sin broadcastable to (..., L, 1, D)."""
  return x * cos + _rotate_half(x) * sin


# ----------------------------------------------------------------------------------------------
# Vision tower
# ----------------------------------------------------------------------------------------------


def vision_rope(positions, head_dim: int, theta: float):
  """positions (B, P, 2) of (row, col) patch ids -> cos, sin of shape (B, P, 1, head_dim), float32.

  Half of head_dim rotates with the row id and half with the column id, same frequencies for both.
  """
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (np.arange(0, half, 2, dtype=np.float32) / half))
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (B, P, 2, D/4)
  freqs = freqs.reshape(*positions.shape[:-1], -1)  # [h freqs | w freqs]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  return jnp.cos(emb), jnp.sin(emb)


def full_attention_segments(segment_ids, window: int):
  """Segment ids for attention over a whole example: each image its own id, and the padding of
  each window (id 0) an id of its own, so padding never makes blocks of different images look
  related to a blockwise kernel. Padding outputs never reach the text."""
  window_index = jnp.arange(segment_ids.shape[1], dtype=jnp.int32) // window
  return jnp.where(segment_ids > 0, segment_ids, -1 - window_index[None, :])


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs, attention=attention_lib.Attention()):
    e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    self.qkv_kernel = _param(rngs, (e, 3, h, d), ("vision_embed", "vision_qkv", "vision_heads", "head_dim"),
                             param_dtype)
    self.qkv_bias = _zeros((3, h, d), ("vision_qkv", "vision_heads", "head_dim"), param_dtype)
    self.proj_kernel = _param(rngs, (h, d, e), ("vision_heads", "head_dim", "vision_embed"), param_dtype)
    self.proj_bias = _zeros((e,), ("vision_embed",), param_dtype)
    self.dtype = dtype
    self.window = cfg.window_patches
    self.attend = attention

  def __call__(self, x, cos, sin, segment_ids, block: int | None):
    """x: (B, P, E); block: window size in patches (window attention) or None (full attention)."""
    dt = self.dtype
    qkv = jnp.einsum("bpe,ethd->bpthd", x, self.qkv_kernel[...].astype(dt)) + self.qkv_bias[...].astype(dt)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # The reference applies the vision rotary embedding in float32.
    q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dt)
    k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dt)
    b, p, h, d = q.shape
    if block is not None:  # fixed-size windows: fold windows into the batch
      q, k, v = (t.reshape(b * p // block, block, h, d) for t in (q, k, v))
      segment_ids = segment_ids.reshape(b * p // block, block)
    else:
      segment_ids = full_attention_segments(segment_ids, self.window)
    out = self.attend(q[:, :, :, None], k, v, segment_ids, segment_ids)
    out = out.reshape(b, p, h, d)
    return jnp.einsum("bphd,hde->bpe", out, self.proj_kernel[...].astype(dt)) + self.proj_bias[...].astype(dt)


class VisionMLP(nnx.Module):

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs):
    e, m = cfg.hidden_size, cfg.intermediate_size
    self.gate_kernel = _param(rngs, (e, m), ("vision_embed", "vision_mlp"), param_dtype)
    self.gate_bias = _zeros((m,), ("vision_mlp",), param_dtype)
    self.up_kernel = _param(rngs, (e, m), ("vision_embed", "vision_mlp"), param_dtype)
    self.up_bias = _zeros((m,), ("vision_mlp",), param_dtype)
    self.down_kernel = _param(rngs, (m, e), ("vision_mlp", "vision_embed"), param_dtype)
    self.down_bias = _zeros((e,), ("vision_embed",), param_dtype)
    self.dtype = dtype

  def __call__(self, x):
    dt = self.dtype
    gate = x @ self.gate_kernel[...].astype(dt) + self.gate_bias[...].astype(dt)
    up = x @ self.up_kernel[...].astype(dt) + self.up_bias[...].astype(dt)
    return (jax.nn.silu(gate) * up) @ self.down_kernel[...].astype(dt) + self.down_bias[...].astype(dt)


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs, attention=attention_lib.Attention()):
    self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
    self.attn = VisionAttention(cfg, dtype, param_dtype, rngs, attention)
    self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
    self.mlp = VisionMLP(cfg, dtype, param_dtype, rngs)

  def __call__(self, x, cos, sin, segment_ids, block):
    x = x + self.attn(self.norm1(x), cos, sin, segment_ids, block)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then each 2x2 group of neighbouring patches -> one LLM token through a GELU MLP."""

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs):
    merged = cfg.hidden_size * cfg.merge_unit
    self.norm = RMSNorm(cfg.hidden_size, 1e-6, param_dtype)
    self.fc1_kernel = _param(rngs, (merged, merged), ("merger_in", "merger_hidden"), param_dtype)
    self.fc1_bias = _zeros((merged,), ("merger_hidden",), param_dtype)
    self.fc2_kernel = _param(rngs, (merged, cfg.out_hidden_size), ("merger_hidden", "embed"), param_dtype)
    self.fc2_bias = _zeros((cfg.out_hidden_size,), ("embed",), param_dtype)
    self.merge_unit = cfg.merge_unit
    self.dtype = dtype

  def __call__(self, x):
    dt = self.dtype
    b, p, e = x.shape
    x = self.norm(x).reshape(b, p // self.merge_unit, e * self.merge_unit)
    x = jax.nn.gelu(x @ self.fc1_kernel[...].astype(dt) + self.fc1_bias[...].astype(dt), approximate=False)
    return x @ self.fc2_kernel[...].astype(dt) + self.fc2_bias[...].astype(dt)


class VisionTower(nnx.Module):

  def __init__(self, cfg: VisionConfig, dtype, param_dtype, rngs: nnx.Rngs, remat: str = "none",
               attention=attention_lib.Attention(), scan: bool = False):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    self.scan = scan
    self.patch_kernel = _param(rngs, (cfg.patch_dim, cfg.hidden_size), ("vision_patch", "vision_embed"),
                               param_dtype)
    self.blocks = nnx.List([VisionBlock(cfg, dtype, param_dtype, rngs, attention) for _ in range(cfg.depth)])
    self.merger = PatchMerger(cfg, dtype, param_dtype, rngs)

  def __call__(self, pixel_values, positions, segment_ids):
    """(B, P, patch_dim) window-ordered patches -> (B, P / merge_unit, out_hidden) merged tokens."""
    cfg = self.cfg
    p = pixel_values.shape[1]
    if p % cfg.window_patches:
      raise ValueError(f"vision: {p} patches per example is not a multiple of the window "
                       f"({cfg.window_patches} patches); build batches with zwz_jax.data.batch")
    x = pixel_values.astype(self.dtype) @ self.patch_kernel[...].astype(self.dtype)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    cos, sin = vision_rope(positions, cfg.head_dim, cfg.rope_theta)
    full = set(cfg.fullatt_block_indexes)
    # Runs of window blocks between the full-attention blocks: one scan each.
    cuts = [c for i in full for c in (i, i + 1)]
    for start, stop in runs(cfg.depth, cuts):
      block = None if start in full else cfg.window_patches

      def body(blk, x, _, block=block):
        x = blk(x, cos, sin, segment_ids, block)
        return constrain(x, ("act_batch", "act_length", "act_embed")), None

      x, _ = run_layers(self.blocks[start:stop], body, x, scan=self.scan, remat=self.remat)
    return self.merger(x)


# ----------------------------------------------------------------------------------------------
# Text decoder
# ----------------------------------------------------------------------------------------------


def mrope_axes(section, interleaved: bool) -> np.ndarray:
  """For each rotary frequency (head_dim / 2 of them), the id stream it takes its angle from:
  0 temporal, 1 height, 2 width.

  Contiguous (Qwen2/2.5-VL): the first section[0] frequencies from temporal ids, the next section[1]
  from height, the rest from width. Interleaved (Qwen3-VL): t, h, w, t, h, w, ... over the first
  3 * section[1|2] frequencies, temporal for the rest.
  """
  if not interleaved:
    return np.repeat(np.arange(len(section)) % 3, section)
  axes = np.zeros(sum(section), np.int64)
  for axis in (1, 2):
    axes[axis:3 * section[axis]:3] = axis
  return axes


def mrope_cos_sin(positions, cfg, dtype):
  """positions (3, B, L) temporal/height/width ids -> cos, sin (B, L, 1, head_dim)."""
  d = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d))
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (3, B, L, D/2)
  section = mrope_axes(cfg.mrope_section, cfg.mrope_interleaved)  # (D/2,)
  freqs = jnp.take_along_axis(freqs, jnp.asarray(section)[None, None, None, :], axis=0)[0]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class TextAttention(nnx.Module):
  """GQA with M-RoPE; q/k/v biases (Qwen2) and per-head q/k RMSNorm (Qwen3) as the config says."""

  def __init__(self, cfg, dtype, param_dtype, rngs: nnx.Rngs, attention=attention_lib.Attention()):
    e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q_kernel = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), param_dtype)
    self.k_kernel = _param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.v_kernel = _param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.o_kernel = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), param_dtype)
    self.bias = cfg.attention_bias
    if self.bias:
      self.q_bias = _zeros((h, d), ("heads", "head_dim"), param_dtype)
      self.k_bias = _zeros((kv, d), ("kv_heads", "head_dim"), param_dtype)
      self.v_bias = _zeros((kv, d), ("kv_heads", "head_dim"), param_dtype)
    self.out_bias = cfg.o_bias
    if self.out_bias:
      self.o_bias = _zeros((e,), ("embed",), param_dtype)
    self.qk_norm = cfg.qk_norm
    if self.qk_norm:
      self.q_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype)
      self.k_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype)
    self.num_kv_heads = kv
    self.dtype = dtype
    self.attend = attention

  def __call__(self, x, cos, sin, segments, cache=None, layer=0, index=0, probs_query=None):
    """segments: (query, key) segment ids (B, T), (B, S): 1 = real token, 0 = padding (padding
    attends only to padding). cache: the model's `KVCache` (every layer's keys and values); this
    call writes its keys/values into layer `layer` (int or traced) at slot `index` and attends over
    that layer's whole cache. probs_query (B,): also return the attention probabilities
    (B, heads, S) of these query positions.
    Returns (output, new cache or None, probabilities or None)."""
    dt = self.dtype
    q = jnp.einsum("ble,ehd->blhd", x, self.q_kernel[...].astype(dt))
    k = jnp.einsum("ble,ehd->blhd", x, self.k_kernel[...].astype(dt))
    v = jnp.einsum("ble,ehd->blhd", x, self.v_kernel[...].astype(dt))
    if self.bias:
      q, k, v = (t + b[...].astype(dt) for t, b in ((q, self.q_bias), (k, self.k_bias), (v, self.v_bias)))
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = constrain(q, ("act_batch", "act_length", "act_heads", None))
    k = constrain(k, ("act_batch", "act_length", "act_kv_heads", None))
    if cache is not None:
      cache = cache.write(layer, index, k, v)
      k, v = cache.read(layer, dt)
    b, l, h, d = q.shape
    # Query head i uses KV head i // (h / kv), as `repeat_kv` in the reference.
    q = q.reshape(b, l, self.num_kv_heads, h // self.num_kv_heads, d)
    attend = functools.partial(self.attend, q, k, v, *segments, causal=True, q_offset=index)
    probs = None
    if probs_query is None:
      out = attend()
    else:
      out, p = attend(return_probs=True)
      p = p.reshape(b, h, l, -1)  # (kv, group) -> head order of the reference
      probs = jnp.take_along_axis(p, probs_query[:, None, None, None], axis=2)[:, :, 0]
    out = jnp.einsum("blhd,hde->ble", out.reshape(b, l, h, d), self.o_kernel[...].astype(dt))
    if self.out_bias:
      out = out + self.o_bias[...].astype(dt)
    return out, cache, probs


class TextMLP(nnx.Module):

  def __init__(self, cfg: TextConfig, dtype, param_dtype, rngs: nnx.Rngs):
    e, m = cfg.hidden_size, cfg.intermediate_size
    self.gate_kernel = _param(rngs, (e, m), ("embed", "mlp"), param_dtype)
    self.up_kernel = _param(rngs, (e, m), ("embed", "mlp"), param_dtype)
    self.down_kernel = _param(rngs, (m, e), ("mlp", "embed"), param_dtype)
    self.dtype = dtype

  def __call__(self, x):
    dt = self.dtype
    h = jax.nn.silu(x @ self.gate_kernel[...].astype(dt)) * (x @ self.up_kernel[...].astype(dt))
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return h @ self.down_kernel[...].astype(dt)


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TextConfig, dtype, param_dtype, rngs: nnx.Rngs, attention=attention_lib.Attention()):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
    self.attn = TextAttention(cfg, dtype, param_dtype, rngs, attention)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
    self.mlp = TextMLP(cfg, dtype, param_dtype, rngs)

  def __call__(self, x, cos, sin, segments, cache=None, layer=0, index=0, probs_query=None):
    """Returns (hidden, new cache or None, attention probabilities or None)."""
    out, cache, probs = self.attn(self.input_norm(x), cos, sin, segments, cache, layer, index, probs_query)
    x = x + out
    x = x + self.mlp(self.post_attn_norm(x))
    return constrain(x, ("act_batch", "act_length", "act_embed")), cache, probs


class Qwen2_5_VL(nnx.Module):
  """Qwen2.5-VL for conditional generation (vision tower + Qwen2 decoder + LM head)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    t, dt, pdt = cfg.text, cfg.dtype, cfg.param_dtype
    self.visual = VisionTower(cfg.vision, dt, pdt, rngs, cfg.remat, cfg.attention_op, cfg.scan_layers)
    self.embed = _param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), pdt)
    self.layers = nnx.List([DecoderLayer(t, dt, pdt, rngs, cfg.attention_op) for _ in range(t.num_layers)])
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, pdt)
    if not t.tie_word_embeddings:
      self.lm_head = _param(rngs, (t.hidden_size, t.vocab_size), ("embed", "vocab"), pdt)

  def embed_inputs(self, input_ids, pixel_values=None, vision_positions=None, vision_segment_ids=None,
                   image_token_index=None):
    """Token embeddings with the merged image features written into the `<|image_pad|>` slots.

    image_token_index (B, L): for each image-pad position, the index of its merged vision token
    (in the window-ordered vision output of the same example); -1 elsewhere. An `<|image_pad|>` id
    with index -1 (one the model generated) keeps its text embedding, as in cached decoding.
    Returns (embeddings, vision features or None, per-layer additions): the additions (B, L, E) are
    added to the outputs of the first decoder layers (none here; Qwen3-VL's DeepStack).
    """
    # Gather from a table split only over vocab (all-gathered over fsdp, as FSDP does for any
    # weight); gathering from a table also split over fsdp forces XLA to replicate it.
    table = constrain(self.embed[...], ("vocab", None))
    x = jnp.take(table, input_ids, axis=0).astype(self.cfg.dtype)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    if pixel_values is None:
      return x, None, []
    feats, extra = self.encode_images(pixel_values, vision_positions, vision_segment_ids)
    is_image = ((input_ids == self.cfg.image_token_id) & (image_token_index >= 0))[..., None]
    index = jnp.maximum(image_token_index, 0)[..., None]
    gather = lambda f: jnp.take_along_axis(f, index, axis=1).astype(x.dtype)
    x = jnp.where(is_image, gather(feats), x)
    return x, feats, [jnp.where(is_image, gather(f), 0) for f in extra]

  def encode_images(self, pixel_values, vision_positions, vision_segment_ids):
    """(merged image features (B, P / merge_unit, E), features for the decoder's early layers)."""
    return self.visual(pixel_values, vision_positions, vision_segment_ids), []

  def logits(self, hidden):
    t = self.cfg.text
    head = self.embed[...].T if t.tie_word_embeddings else self.lm_head[...]
    out = hidden @ head.astype(self.cfg.dtype)
    return constrain(out, ("act_batch", "act_length", "act_vocab"))

  def __call__(self, input_ids, positions, attention_mask=None, pixel_values=None, vision_positions=None,
               vision_segment_ids=None, image_token_index=None, *, cache=None, cache_index=0, head: bool = True,
               return_hidden: bool = False, attention_layer: int | None = None, attention_query=None):
    """Causal LM forward, one decoder loop for training, prefill and cached decode.

    input_ids (B, T) int; positions (3, B, T) M-RoPE ids. attention_mask (B, S), 1 = real token,
    over the keys: the tokens themselves, or with a cache its slots (left padding of a prompt is 0).
    pixel_values (B, P, patch_dim), vision_positions (B, P, 2), vision_segment_ids (B, P): the
    window-ordered, window-padded patches of each example (see the module docstring).
    cache (from `init_cache`): run the tokens as slots cache_index .. cache_index + T - 1 (prefill:
    index 0 with the images; decode: T = 1) and return (logits, new cache).
    head=False: the final-norm hidden states (B, T, E) instead of logits (losses apply the LM head
    blockwise, see zwz_jax.train.losses).
    attention_layer / attention_query (B,): also return that decoder layer's attention
    probabilities (B, heads, S) for one query position per example (attention coverage).
    Returns logits (B, T, vocab); with a cache (logits, cache); with `return_hidden` or
    `attention_layer` also a dict of intermediates.
    """
    x, feats, inject = self.embed_inputs(input_ids, pixel_values, vision_positions, vision_segment_ids,
                                         image_token_index)
    b, t = input_ids.shape
    keys = t if cache is None else cache.length
    kv_seg = (jnp.ones((b, keys), jnp.int32) if attention_mask is None
              else attention_mask.astype(jnp.int32))
    q_seg = kv_seg if cache is None else jax.lax.dynamic_slice_in_dim(kv_seg, cache_index, t, axis=1)
    segments = (q_seg, kv_seg)
    cos, sin = mrope_cos_sin(positions, self.cfg.text, self.cfg.dtype)
    n = len(self.layers)

    def body(layer, carry, xs):
      x, cache = carry
      i, add = xs
      x, cache, _ = layer(x, cos, sin, segments, cache, i, cache_index)
      out = x  # the layer's output, before any DeepStack addition (as transformers reports it)
      if add is not None:
        x = x + add
      return (x, cache), (out if return_hidden else None)

    # Runs of identical layers: the DeepStack-injected ones, the one whose attention is returned,
    # the rest. The returned-attention layer runs alone, outside the scan.
    cuts = [len(inject)] + ([attention_layer, attention_layer + 1] if attention_layer is not None else [])
    hidden, probs = [x], None
    for start, stop in runs(n, cuts):
      if start == attention_layer:
        x, _, probs = self.layers[start](x, cos, sin, segments, probs_query=attention_query)
        hidden.append(x)
        if start < len(inject):
          x = x + inject[start]
        continue
      adds = jnp.stack(inject[start:stop]) if start < len(inject) else None
      (x, cache), ys = run_layers(self.layers[start:stop], body, (x, cache), (jnp.arange(start, stop), adds),
                                  scan=self.cfg.scan_layers, remat=self.cfg.remat)
      if return_hidden:
        hidden.extend(ys[j] for j in range(stop - start))
    out = self.norm(x)
    if head:
      out = self.logits(out)
    if cache is not None:
      return out, cache
    if return_hidden or attention_layer is not None:
      return out, {"layers": hidden, "vision": feats, "attention": probs}
    return out

  def init_cache(self, batch: int, length: int, dtype=None) -> "KVCache":
    """Empty key/value cache for every layer: (layers, batch, length, kv_heads, head_dim) each."""
    t = self.cfg.text
    shape = (t.num_layers, batch, length, t.num_kv_heads, t.head_dim)
    zeros = lambda: constrain(jnp.zeros(shape, dtype or self.cfg.dtype), KVCache.AXES)
    return KVCache(zeros(), zeros())


class KVCache(NamedTuple):
  """Keys and values of every decoder layer, stacked: (layers, batch, slots, kv_heads, head_dim).

  One array per side, so a scan over layers carries it and updates it in place, and a decode step
  writes only its new slots. The batch is axis 1 (`repeat` for samples sharing a prefill)."""
  k: jax.Array
  v: jax.Array

  AXES = ("layers", "act_batch", "act_length", "act_kv_heads", None)

  def write(self, layer, index, k, v) -> "KVCache":
    """This call's (B, T, KV, D) keys and values into `layer` at slots index .. index + T - 1."""
    put = lambda c, x: jax.lax.dynamic_update_slice(c, x[None].astype(c.dtype), (layer, 0, index, 0, 0))
    return KVCache(put(self.k, k), put(self.v, v))

  def read(self, layer, dtype):
    """(B, S, KV, D) keys and values of `layer`."""
    get = lambda c: jax.lax.dynamic_index_in_dim(c, layer, axis=0, keepdims=False).astype(dtype)
    return get(self.k), get(self.v)

  def repeat(self, n: int) -> "KVCache":
    """Each example's cache n times in a row (rows i * n .. i * n + n - 1 are example i)."""
    return KVCache(*(jnp.repeat(c, n, axis=1) for c in self))

  @property
  def length(self) -> int:
    return self.k.shape[2]
