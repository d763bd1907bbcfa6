"""The layers both student families share: parameter helpers, norms, rotary embeddings, the vision
attention, block and patch merger, the text decoder layer (GQA with M-RoPE) and the stacked KV cache.

A family module (`qwen2_5_vl`, `qwen3_vl`) holds only what differs: its config fields, its vision
MLP and norms, its vision tower. What a shared layer does differently per family is a config field
(q/k/v biases, q/k norms, interleaved M-RoPE) or a part the family passes in (the vision norm and
MLP), not a subclass. All attention goes through
`zwz_jax.models.attention`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zwz_jax.models import attention as attention_lib
from zwz_jax.sharding import constrain, constrain_residual, gather_length, gather_length_grad, split_heads

_INIT = nnx.initializers.normal(0.02)  # HF's initializer_range


def param(rngs: nnx.Rngs, shape, axes, dtype, init=_INIT) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


def zeros(shape, axes, dtype) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


def dense(x, kernel, dims: int = 1):
  """x's last `dims` axes contracted with kernel's first `dims`, as one 2-D (rows x in) @ (in x out)
  matmul. Why 2-D: while x keeps its (batch, length) axes, XLA:CPU copies a transpose of the
  cotangent for every weight gradient; over flat rows it contracts them in place (the tiny bench's
  gradient 8% faster, the small one's 4%). Rows keep the batch's sharding (length is unsharded)."""
  lead, inner = x.shape[:x.ndim - dims], kernel.shape[:dims]
  k = int(np.prod(inner))
  out = x.reshape(-1, k) @ kernel.reshape(k, -1)
  return out.reshape(*lead, *kernel.shape[dims:])


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(dtype) * x32.astype(dtype)



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


def silu(x):
  """x * sigmoid(x), written out. Through jax.nn.silu, XLA:CPU fused the gated MLP's gradient into
  a transposed copy for the weight-gradient matmul (5-10 ms a layer, about a tenth of the small
  bench case's train step); in this form that pass is elementwise (about 2 ms). Same values on
  every backend."""
  return x * jax.lax.logistic(x)


def _rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
  """x: (..., L, heads, D); cos/sin broadcastable to (..., L, 1, D)."""
  return x * cos + _rotate_half(x) * sin



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
  # lax.div, not //: the positions are not negative, and XLA:CPU fuses this into every element of a
  # dense (S x S) mask, where floor division's sign handling took 216 of the small bench prefill's
  # 2,330 ms (one core).
  window_index = jax.lax.div(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), jnp.int32(window))
  return jnp.where(segment_ids > 0, segment_ids, -1 - window_index[None, :])


class VisionAttention(nnx.Module):
  """Multi-head attention with a fused q/k/v projection and the 2D rotary embedding, over fixed-size
  windows or over the whole example (every image its own segment)."""

  def __init__(self, cfg, rngs: nnx.Rngs):
    v, pdt = cfg.vision, cfg.param_dtype
    e, h, d = v.hidden_size, v.num_heads, v.head_dim
    self.qkv_kernel = param(rngs, (e, 3, h, d), ("vision_embed", "vision_qkv", "vision_heads", "head_dim"), pdt)
    self.qkv_bias = zeros((3, h, d), ("vision_qkv", "vision_heads", "head_dim"), pdt)
    self.proj_kernel = param(rngs, (h, d, e), ("vision_heads", "head_dim", "vision_embed"), pdt)
    self.proj_bias = zeros((e,), ("vision_embed",), pdt)
    self.dtype = cfg.dtype
    self.window = v.window_patches
    self.max_images = v.max_images
    self.attend = cfg.attention_op

  def __call__(self, x, cos, sin, segment_ids, block: int | None):
    """x: (B, P, E); block: window size in patches (window attention) or None (full attention)."""
    dt = self.dtype
    qkv = dense(x, self.qkv_kernel[...].astype(dt)) + self.qkv_bias[...].astype(dt)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # The reference applies the vision rotary embedding in float32.
    q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dt)
    k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dt)
    b, p, h, d = q.shape
    runs = {}
    if block is not None:  # fixed-size windows: fold windows into the batch
      q, k, v = (t.reshape(b * p // block, block, h, d) for t in (q, k, v))
      segment_ids = segment_ids.reshape(b * p // block, block)
    elif self.attend.packs_runs(p, dt, d):
      # cuDNN's packed layout, sorted by id: one run per image, all padding (id 0) one more.
      runs = {"max_runs": self.max_images + 1}
    else:
      segment_ids = full_attention_segments(segment_ids, self.window)
    out = self.attend(q[:, :, :, None], k, v, segment_ids, segment_ids, **runs)
    out = split_heads(out.reshape(b, p, h, d))
    return dense(out, self.proj_kernel[...].astype(dt), 2) + self.proj_bias[...].astype(dt)

class VisionBlock(nnx.Module):
  """Pre-norm vision block: norm, attention (windows or the whole example), residual; norm, MLP,
  residual. The family gives its norm (dim -> module) and MLP ((cfg, rngs) -> module)."""

  def __init__(self, cfg, rngs: nnx.Rngs, *, norm, mlp):
    self.norm1 = norm(cfg.vision.hidden_size)
    self.attn = VisionAttention(cfg, rngs)
    self.norm2 = norm(cfg.vision.hidden_size)
    self.mlp = mlp(cfg, rngs)

  def __call__(self, x, cos, sin, segment_ids, block: int | None = None):
    x = x + gather_length_grad(self.attn(gather_length(self.norm1(x)), cos, sin, segment_ids, block))
    return x + gather_length_grad(self.mlp(gather_length(self.norm2(x))))


class PatchMerger(nnx.Module):
  """Each group of `merge_unit` neighbouring patches -> one LLM token: a norm, then a GELU MLP.

  The norm (the family's, dim -> module) applies to each patch before the group is concatenated,
  or with `postshuffle` (Qwen3-VL's DeepStack mergers) to the concatenated group.
  """

  def __init__(self, cfg, rngs: nnx.Rngs, *, norm, postshuffle: bool = False):
    v, pdt = cfg.vision, cfg.param_dtype
    merged = v.hidden_size * v.merge_unit
    self.postshuffle = postshuffle
    self.norm = norm(merged if postshuffle else v.hidden_size)
    self.fc1_kernel = param(rngs, (merged, merged), ("merger_in", "merger_hidden"), pdt)
    self.fc1_bias = zeros((merged,), ("merger_hidden",), pdt)
    self.fc2_kernel = param(rngs, (merged, v.out_hidden_size), ("merger_hidden", "embed"), pdt)
    self.fc2_bias = zeros((v.out_hidden_size,), ("embed",), pdt)
    self.merge_unit = v.merge_unit
    self.dtype = cfg.dtype

  def __call__(self, x):
    dt = self.dtype
    b, p, e = x.shape
    if self.postshuffle:
      x = self.norm(x.reshape(b, p // self.merge_unit, e * self.merge_unit))
    else:
      x = self.norm(x).reshape(b, p // self.merge_unit, e * self.merge_unit)
    x = jax.nn.gelu(dense(x, self.fc1_kernel[...].astype(dt)) + self.fc1_bias[...].astype(dt), approximate=False)
    return dense(x, self.fc2_kernel[...].astype(dt)) + self.fc2_bias[...].astype(dt)


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

  def __init__(self, cfg, rngs: nnx.Rngs):
    t, param_dtype = cfg.text, cfg.param_dtype
    e, h, kv, d = t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim
    self.q_kernel = param(rngs, (e, h, d), ("embed", "heads", "head_dim"), param_dtype)
    self.k_kernel = param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.v_kernel = param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.o_kernel = param(rngs, (h, d, e), ("heads", "head_dim", "embed"), param_dtype)
    self.bias = t.attention_bias
    if self.bias:
      self.q_bias = zeros((h, d), ("heads", "head_dim"), param_dtype)
      self.k_bias = zeros((kv, d), ("kv_heads", "head_dim"), param_dtype)
      self.v_bias = zeros((kv, d), ("kv_heads", "head_dim"), param_dtype)
    self.out_bias = t.o_bias
    if self.out_bias:
      self.o_bias = zeros((e,), ("embed",), param_dtype)
    self.qk_norm = t.qk_norm
    if self.qk_norm:
      self.q_norm = RMSNorm(d, t.rms_norm_eps, param_dtype)
      self.k_norm = RMSNorm(d, t.rms_norm_eps, param_dtype)
    self.num_kv_heads = kv
    self.dtype = cfg.dtype
    self.attend = cfg.attention_op

  def __call__(self, x, cos, sin, segments, cache=None, layer=0, index=0, probs_query=None):
    """segments: (query, key) segment ids (B, T), (B, S): 1 = real token, 0 = padding (padding
    attends only to padding). cache: the model's `KVCache` (every layer's keys and values); this
    call writes its keys/values into layer `layer` (int or traced) at slot `index` and attends over
    that layer's whole cache. probs_query (B,): also return the attention probabilities
    (B, heads, S) of these query positions.
    Returns (output, new cache or None, probabilities or None)."""
    dt = self.dtype
    q = dense(x, self.q_kernel[...].astype(dt))
    k = dense(x, self.k_kernel[...].astype(dt))
    v = dense(x, self.v_kernel[...].astype(dt))
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
    # The queries are the first keys (no cache, or a prefill at slot 0) with padding on either side of
    # them: at most three runs of equal segment ids per row (cuDNN takes them as packed sequences).
    out = self.attend(q, k, v, *segments, causal=True, q_offset=index, max_runs=3)
    probs = None
    if probs_query is not None:
      probs = attention_lib.query_probs(q, k, *segments, probs_query, causal=True, q_offset=index)
      probs = probs.reshape(b, h, -1)  # (kv, group) -> head order of the reference
    out = dense(split_heads(out.reshape(b, l, h, d)), self.o_kernel[...].astype(dt), 2)
    if self.out_bias:
      out = out + self.o_bias[...].astype(dt)
    return out, cache, probs


class TextMLP(nnx.Module):
  """SwiGLU without biases."""

  def __init__(self, cfg, rngs: nnx.Rngs):
    e, m, pdt = cfg.text.hidden_size, cfg.text.intermediate_size, cfg.param_dtype
    self.gate_kernel = param(rngs, (e, m), ("embed", "mlp"), pdt)
    self.up_kernel = param(rngs, (e, m), ("embed", "mlp"), pdt)
    self.down_kernel = param(rngs, (m, e), ("mlp", "embed"), pdt)
    self.dtype = cfg.dtype

  def __call__(self, x):
    dt = self.dtype
    h = silu(dense(x, self.gate_kernel[...].astype(dt))) * dense(x, self.up_kernel[...].astype(dt))
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return dense(h, self.down_kernel[...].astype(dt))


class DecoderLayer(nnx.Module):
  """Pre-norm decoder layer: RMSNorm, attention, residual; RMSNorm, SwiGLU, residual."""

  def __init__(self, cfg, rngs: nnx.Rngs):
    t = cfg.text
    self.input_norm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.attn = TextAttention(cfg, rngs)
    self.post_attn_norm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.mlp = TextMLP(cfg, rngs)

  def __call__(self, x, cos, sin, segments, cache=None, layer=0, index=0, probs_query=None):
    """Returns (hidden, new cache or None, attention probabilities or None)."""
    out, cache, probs = self.attn(gather_length(self.input_norm(x)), cos, sin, segments, cache, layer, index,
                                  probs_query)
    x = x + gather_length_grad(out)
    x = x + gather_length_grad(self.mlp(gather_length(self.post_attn_norm(x))))
    return constrain_residual(x), cache, probs



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
