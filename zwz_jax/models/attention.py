"""One attention op for every attention in the students: vision windows, vision full attention,
the text decoder's training / prefill pass and its cached decode step.

Masks are described, never handed over as (T x S) tensors: segment ids (a key is visible to a query
only when both carry the same id: one id per image or window in the vision tower, 1 = real and
0 = padding in the decoder) and an optional causal rule (key position <= `q_offset` + query index).
A row with no visible key is undefined (as in splash attention): callers give padding a segment of
its own so that no row is empty.

Backends (`model.attention`):
  dense    einsum + float32 softmax over the whole (T x S) score matrix: the reference. Attention
           coverage's probabilities come from its formula for one query row (`query_probs`), next to
           whichever backend computes the layer.
  chunked  pure JAX, blockwise online softmax with a backward that recomputes each block's scores
           (flash-attention style): memory linear in length; blocks without a visible pair skipped.
  splash   Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) with segment
           ids and a causal mask, inside shard_map over the batch and KV-head axes; on a platform other
           than TPU it runs in Pallas interpret mode (tests).
  cudnn    cuDNN flash attention, 16-bit activations only. Where the caller bounds the runs of equal
           segment ids (`max_runs`: the decoder, and the vision tower's full attention, sorted by
           image first), each run goes to cuDNN as a packed sequence, with no mask; elsewhere
           (`jax.nn.dot_product_attention(implementation="cudnn")`) the segment rule goes as one
           (B, 1, T, S) boolean mask shared by every head, which cuDNN turns into a bias: O(T x S)
           per example. Off a GPU, XLA computes the same rule (tests).
  auto     splash on TPU, cudnn on GPU (chunked there for float32 activations or a head size cuDNN does
           not take), chunked elsewhere, dense when the score matrix is small or for one query (a
           cached decode step is linear in the cache either way). On CPU, differentiated, chunked
           in blocks that leave some to skip (CPU_GRAD_BLOCKS).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

BACKENDS = ("auto", "dense", "chunked", "splash", "cudnn")
# What `auto` runs at long lengths, by the platform the program is compiled for.
_LONG = {"tpu": "splash", "gpu": "cudnn"}
# auto picks dense while T x S stays at or below this many scores per head.
DENSE_MAX_SCORES = 1024 * 1024
# Queries per step of the dense forward on CPU outside differentiation (prefill, evaluation), once
# the whole (B x heads x T x S) scores pass DENSE_BLOCKED_SCORES: a block's scores stay in cache
# instead of the whole array going through memory several times. XLA:CPU, full attention over
# 4 x 1,024 patches, 4 heads of 64: 122 ms in one block, 43 ms in blocks of 128, 50 of 256, 83 of
# 64; 1 x 1,024: 27 -> 12 ms; causal text, 4 x 386 tokens, 8 heads: 32 -> 20 ms, and 16 -> 12 ms
# more once each causal block (unrolled) takes only the keys up to its last query. At 1M scores and
# below (1 x 512 patches, 2 x 224 tokens) blocks only cost. Under differentiation the forward keeps
# the (T x S) probabilities for the backward anyway; TPU and GPU run one fused block.
DENSE_QUERY_BLOCK = 128
DENSE_BLOCKED_SCORES = 2 * 1024 * 1024
# auto on XLA:CPU under differentiation (training, GRPO's update): chunked, its blocks skipping the
# causal rule's upper triangle and whole blocks of padding, which dense computes and then keeps for
# its backward. The block: the largest power of two within CPU_GRAD_BLOCKS that cuts the keys into
# at least four, so that there are blocks to skip; a smaller block steps the loop more often, with
# less work per step. Forward and backward at float32, median ms (dense / 64 / 128 / 256 / 512;
# in parentheses the block this rule takes):
#   full, 8 x 512 patches, 4 heads of 16, 54% padding:      71 / 31 / 26 / 43 / 66     (128)
#   causal, 8 x 320 tokens, 8 heads of 16, 42% padding:     43 / 14 / 24 / 63 / 49     (64)
#   full, 4 x 1,024 patches, 4 heads of 64, 35% padding:   187 / 161 / 131 / 145 / 182 (256)
#   causal, 1 x 2,048 tokens, 8 heads of 64:               320 / 233 / 217 / 114 / 141 (512)
#   full, 1 x 3,072 patches (2 images), 16 heads of 80:      - / - / 1251 / 1025 / 887 (512)
# Evaluated only (prefill, evaluation), auto stays as above: dense's query blocks beat blockwise
# there (the small bench prefill: 954 ms dense, 1,341 chunked at 64).
CPU_GRAD_BLOCKS = (64, 512)
_NEG = float(np.finfo(np.float32).min)
_PAD_SEGMENT = int(np.iinfo(np.int32).min)  # segment of the rows padded to a block multiple


def check_backend(name: str) -> str:
  if name not in BACKENDS:
    raise ValueError(f"model.attention={name!r} is not one of {list(BACKENDS)}")
  return name


@dataclasses.dataclass(frozen=True)
class Attention:
  """The attention op as a model's layers hold it: backend and block size from the model config."""
  backend: str = "auto"
  block: int = 512

  def __post_init__(self):
    check_backend(self.backend)

  def __call__(self, q, k, v, q_segment_ids, kv_segment_ids, **kwargs):
    return attend(q, k, v, q_segment_ids, kv_segment_ids, backend=self.backend, block=self.block, **kwargs)

  def packs_runs(self, t: int, dtype, head_dim: int) -> bool:
    """Whether self-attention over t positions given `max_runs` goes to cuDNN as packed runs (where a
    caller may describe its segments for that layout rather than for a blockwise kernel)."""
    return resolve(self.backend, t, t, dtype, head_dim) == "cudnn"


def _platform() -> str:
  """The platform the program is compiled for: the mesh's devices (a TPU topology compiled from a
  CPU host says tpu), else the default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def resolve(backend: str, t: int, s: int, dtype=jnp.bfloat16, head_dim: int = 128) -> str:
  """The backend `auto` stands for at this (queries, keys) shape, activation dtype and head size."""
  if backend != "auto":
    return backend
  if t == 1 or t * s <= DENSE_MAX_SCORES:
    return "dense"
  long = _LONG.get(_platform(), "chunked")
  if long == "cudnn" and not cudnn_supports(dtype, head_dim):
    return "chunked"
  return long


def cudnn_supports(dtype, head_dim: int) -> bool:
  """What cuDNN's flash kernel takes (Hopper): 16-bit activations, a head size a multiple of 8 up to 256."""
  return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and head_dim % 8 == 0 \
      and head_dim <= 256


def visible(q_segment_ids, kv_segment_ids, causal: bool, q_offset=0):
  """(B, T, S) bool: which keys each query sees. q_offset: the first query's key position, one for
  every row (an int or a traced scalar) or one per row ((B,))."""
  mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  if causal:
    t, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    mask &= jnp.arange(s)[None, None, :] <= jnp.reshape(q_offset, (-1, 1, 1)) + jnp.arange(t)[None, :, None]
  return mask


def attend(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool = False, q_offset=0,
           backend: str = "auto", block: int = 512, max_runs: int | None = None):
  """Softmax attention with grouped KV heads.

  q (B, T, Hkv, G, D); k, v (B, S, Hkv, D); segment ids (B, T) and (B, S) int. Query head
  (kv, g) attends with KV head kv, as `repeat_kv` in the reference. Scores and softmax in float32,
  output in q's dtype (B, T, Hkv, G, D). q_offset: position of the first query in the key
  sequence (a cached decode step), an int or a traced scalar. `query_probs` gives the probabilities
  of chosen queries.

  max_runs: declares that the queries are the first T keys with the same segment ids (self-attention,
  or a prefill at offset 0 whose later cache slots the causal rule hides), and bounds the runs of
  equal ids a row can hold (the decoder: padding before and after the tokens, 3). cudnn then hands
  cuDNN the runs as packed sequences, each attending within itself, instead of a (T x S) mask: the
  same result wherever each id forms one run (a padding id split in two runs differs only at
  padding). Without the causal rule order does not matter, so each row is first sorted by id and
  max_runs bounds its distinct ids (the vision tower's full attention: its images, and padding
  between their windows). Positions past max_runs runs come out NaN.
  """
  t, s = q.shape[1], k.shape[1]
  q_segment_ids = q_segment_ids.astype(jnp.int32)
  kv_segment_ids = kv_segment_ids.astype(jnp.int32)
  if causal and isinstance(q_offset, int) and q_offset + t < s:
    # Keys after the last query are invisible under the causal rule (a prefill into a longer cache):
    # dropped before any backend spends work or a mask on them.
    s = q_offset + t
    k, v, kv_segment_ids = k[:, :s], v[:, :s], kv_segment_ids[:, :s]
  name = resolve(check_backend(backend), t, s, q.dtype, q.shape[-1])
  if name == "splash" and not (isinstance(q_offset, int) and q_offset == 0 and t <= s):
    name = "chunked"  # splash's masks are static: decode steps at a traced offset go blockwise
  if backend == "auto" and s > CPU_GRAD_BLOCKS[0] and _platform() == "cpu":
    return _cpu_auto(q, k, v, q_segment_ids, kv_segment_ids, jnp.asarray(q_offset, jnp.int32), causal, name, block)
  return _run(name, q, k, v, q_segment_ids, kv_segment_ids, q_offset, causal, block, max_runs)


def query_probs(q, k, q_segment_ids, kv_segment_ids, query, *, causal: bool = False, q_offset=0):
  """Float32 attention probabilities (B, Hkv, G, S) of one query per row, at `query` (B,) among
  `attend`'s T queries (same arguments), as dense computes them: the one (1 x S) row, not the
  (T x S) matrix (attention coverage reads one row of one layer; at 16K tokens the matrix is 31 GB
  per example)."""
  index = query.astype(jnp.int32)[:, None]
  q1 = jnp.take_along_axis(q, index[:, :, None, None, None], axis=1)
  segment = jnp.take_along_axis(q_segment_ids.astype(jnp.int32), index, axis=1)
  mask = visible(segment, kv_segment_ids.astype(jnp.int32), causal, q_offset + index[:, 0])
  return _dense_probs(jnp.moveaxis(q1, 1, 3), jnp.moveaxis(k, 1, 2), mask)[0][:, :, :, 0]


def _run(name: str, q, k, v, qs, ks, q_offset, causal: bool, block: int, max_runs: int | None = None):
  t, s = q.shape[1], k.shape[1]
  if name == "dense":
    return _dense(q, k, v, visible(qs, ks, causal, q_offset), q_offset if causal and isinstance(q_offset, int) else None)
  if name == "chunked":
    return _chunked(q, k, v, qs, ks, jnp.asarray(q_offset, jnp.int32), causal, min(block, t), min(block, s))
  if name == "cudnn":
    if max_runs and isinstance(q_offset, int) and q_offset == 0 and t == s:
      return _cudnn_packed(q, k, v, qs, causal, max_runs)
    return _cudnn(q, k, v, qs, ks, causal, q_offset)
  return _splash(q, k, v, qs, ks, causal, block)


def _cpu_grad_block(s: int) -> int:
  low, high = CPU_GRAD_BLOCKS
  return min(high, max(low, 1 << max(s // 4, 1).bit_length() - 1))


# auto on CPU: evaluated, the backend `resolve` names; differentiated, chunked at _cpu_grad_block.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _cpu_auto(q, k, v, qs, ks, q_offset, causal, name, block):
  return _run(name, q, k, v, qs, ks, q_offset, causal, block)


def _cpu_auto_fwd(q, k, v, qs, ks, q_offset, causal, name, block):
  block = _cpu_grad_block(k.shape[1])
  bq, bk = min(block, q.shape[1]), min(block, k.shape[1])
  return jax.vjp(lambda q, k, v: _chunked(q, k, v, qs, ks, q_offset, causal, bq, bk), q, k, v)


def _cpu_auto_bwd(causal, name, block, grads, dout):
  return (*grads(dout), None, None, None)


_cpu_auto.defvjp(_cpu_auto_fwd, _cpu_auto_bwd)


def _dense(q, k, v, mask, causal_offset: int | None = None):
  """causal_offset: under the causal rule, the first query's key position when it is static. Where
  the queries go in blocks (_dense_blocked), each block then takes the keys up to its last query
  only, and the upper triangle is never computed (causal text, 4 x 386 tokens: see
  DENSE_QUERY_BLOCK)."""
  # Heads lead, (B, Hkv, G, T, D) and (B, Hkv, S, D): the score and output matmuls are then plain
  # batched matmuls; the token-major einsums made XLA:CPU copy every (T x S) operand to a new layout.
  qh, kh, vh = jnp.moveaxis(q, 1, 3), jnp.moveaxis(k, 1, 2), jnp.moveaxis(v, 1, 2)
  if causal_offset is not None and _dense_blocked(qh, mask):
    t, bq = qh.shape[3], _dense_query_block(qh.shape[3])
    ends = [(i, min(i + bq, t), causal_offset + min(i + bq, t)) for i in range(0, t, bq)]
    out = jnp.concatenate([_dense_core(qh[:, :, :, i:j], kh[:, :, :e], vh[:, :, :e], mask[:, i:j, :e])
                           for i, j, e in ends], axis=3)
  else:
    out = _dense_core(qh, kh, vh, mask)
  return jnp.moveaxis(out, 3, 1)


def _dense_blocked(qh, mask) -> bool:
  """Whether the dense forward goes in query blocks (see DENSE_QUERY_BLOCK)."""
  return (qh.shape[3] > DENSE_QUERY_BLOCK and mask.size * qh.shape[1] * qh.shape[2] >= DENSE_BLOCKED_SCORES
          and _platform() == "cpu")


def _dense_query_block(t: int) -> int:
  """The fewest blocks of at most DENSE_QUERY_BLOCK queries, each a multiple of 8: little padding."""
  cdiv = lambda a, b: -(-a // b)
  return 8 * cdiv(cdiv(t, cdiv(t, DENSE_QUERY_BLOCK)), 8)


def _dense_probs(qh, kh, mask):
  """(float32 probabilities (B, Hkv, G, T, S), the scaled queries)."""
  # The softmax scale goes on the (T x D) queries, not the (T x S) scores: XLA:CPU's fused matmul
  # took the scalar as a materialised (T x S) operand.
  qs = qh * jnp.asarray(qh.shape[-1] ** -0.5, qh.dtype)
  logits = jnp.einsum("bkgtd,bksd->bkgts", qs, kh, preferred_element_type=jnp.float32)
  return jax.nn.softmax(jnp.where(mask[:, None, None], logits, _NEG), axis=-1), qs


def _dense_heads(qh, kh, vh, mask):
  """(output (B, Hkv, G, T, D), float32 probabilities (B, Hkv, G, T, S), the scaled queries)."""
  probs32, qs = _dense_probs(qh, kh, mask)
  return jnp.einsum("bkgts,bksd->bkgtd", probs32.astype(qh.dtype), vh), probs32, qs


@jax.custom_vjp
def _dense_core(qh, kh, vh, mask):
  t = qh.shape[3]
  if not _dense_blocked(qh, mask):
    return _dense_heads(qh, kh, vh, mask)[0]
  bq = _dense_query_block(t)
  # Padded queries see no key: uniform rows, sliced off.
  qp, mp = _pad_axis(qh, 3, bq, 0), _pad_axis(mask, 1, bq, False)
  out = jax.lax.map(lambda xs: _dense_heads(xs[0], kh, vh, xs[1])[0], (_blocks(qp, bq, 3), _blocks(mp, bq)))
  return _unblock(out, 3)[:, :, :, :t]


def _dense_core_fwd(qh, kh, vh, mask):
  out, probs32, qs = _dense_heads(qh, kh, vh, mask)
  return out, (qs, kh, vh, probs32, out)


def _dense_core_bwd(res, dout):
  # The softmax backward written out (dS = P * (dP - rowsum(dO * O))): autodiff of softmax(where())
  # took several more passes over the (T x S) scores; this one is the dense path's whole cost on CPU.
  qs, kh, vh, p, out = res
  # dV and dK contract over the queries. Written as (D x S) = (T x D)^T (T x S) and then transposed,
  # the transposed operand is the small (T x D) one; as (S x D) XLA:CPU copied the (T x S) one.
  dv = jnp.swapaxes(jnp.einsum("bkgtd,bkgts->bkds", dout, p.astype(dout.dtype)), -1, -2)
  dp = jnp.einsum("bkgtd,bksd->bkgts", dout, vh, preferred_element_type=jnp.float32)
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  ds = (p * (dp - delta)).astype(qs.dtype)  # d(logits); the scale is applied to dq below
  dq = jnp.einsum("bkgts,bksd->bkgtd", ds, kh) * jnp.asarray(qs.shape[-1] ** -0.5, qs.dtype)
  dk = jnp.swapaxes(jnp.einsum("bkgtd,bkgts->bkds", qs, ds), -1, -2)
  return dq, dk, dv, None


_dense_core.defvjp(_dense_core_fwd, _dense_core_bwd)


# ----------------------------------------------------------------------------------------------
# chunked: blockwise online softmax, custom backward
# ----------------------------------------------------------------------------------------------


def _pad_axis(x, axis: int, multiple: int, value):
  pad = -x.shape[axis] % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _blocks(x, size: int, axis: int = 1):
  """Blocks of `size` along `axis`, the block index leading for lax.map / scan:
  (B, N * size, ...) -> (N, B, size, ...) at axis 1."""
  n = x.shape[axis] // size
  return jnp.moveaxis(x.reshape(*x.shape[:axis], n, size, *x.shape[axis + 1:]), axis, 0)


def _unblock(x, axis: int = 1):
  """The inverse of `_blocks`: (N, B, size, ...) -> (B, N * size, ...) at axis 1."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])


def _block_mask(qs, ks, i, j, bq, bk, q_offset, causal):
  """(B, bq, bk) visibility of q block i against kv block j."""
  mask = qs[:, :, None] == ks[:, None, :]
  if causal:
    qpos = q_offset + i * bq + jnp.arange(bq)
    kpos = j * bk + jnp.arange(bk)
    mask &= (kpos[None, :] <= qpos[:, None])[None]
  return mask


def _scores(qi, kj, mask):
  """(B, Hkv, G, bq, bk) float32 scores of scaled queries, masked entries at the float32 minimum."""
  s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32)
  return jnp.where(mask[:, None, None], s, _NEG)


# The core works heads-leading, q (B, Hkv, G, T, D) with the softmax scale already applied and k, v
# (B, Hkv, S, D), as dense does: every block product is then a plain batched matmul (token-major
# einsums made XLA:CPU copy blocks to new layouts), and no (bq x bk) block is multiplied by the scale.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _chunked_core(q, k, v, qs, ks, causal, bq, bk, q_offset):
  return _chunked_fwd(q, k, v, qs, ks, causal, bq, bk, q_offset)[0]


def _chunked_fwd(q, k, v, qs, ks, causal, bq, bk, q_offset):
  b, hkv, g, _, d = q.shape
  kb, vb, ksb = _blocks(k, bk, 2), _blocks(v, bk, 2), _blocks(ks, bk)
  nk = kb.shape[0]

  def q_block(xs):
    qi, qsi, i = xs

    def kv_step(carry, ys):
      kj, vj, ksj, j = ys
      mask = _block_mask(qsi, ksj, i, j, bq, bk, q_offset, causal)

      def update(carry):
        m, l, acc = carry
        s = _scores(qi, kj, mask)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        l = alpha * l + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
        return m_new, l, alpha[..., None] * acc + pv

      return jax.lax.cond(jnp.any(mask), update, lambda c: c, carry), None

    init = (jnp.full((b, hkv, g, bq), -jnp.inf, jnp.float32), jnp.zeros((b, hkv, g, bq), jnp.float32),
            jnp.zeros((b, hkv, g, bq, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_step, init, (kb, vb, ksb, jnp.arange(nk)))
    safe = jnp.where(l > 0, l, 1.0)
    out = (acc / safe[..., None]).astype(q.dtype)  # (B, Hkv, G, bq, D)
    lse = jnp.where(l > 0, m + jnp.log(safe), 0.0)
    return out, lse

  qb = _blocks(q, bq, 3)
  out, lse = jax.lax.map(q_block, (qb, _blocks(qs, bq), jnp.arange(qb.shape[0])))
  out, lse = _unblock(out, 3), _unblock(lse, 3)  # (B, Hkv, G, T, D), (B, Hkv, G, T)
  return out, (q, k, v, qs, ks, q_offset, out, lse)


def _chunked_bwd(causal, bq, bk, res, dout):
  q, k, v, qs, ks, q_offset, out, lse = res
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (B, Hkv, G, T)
  qb, qsb, dob = _blocks(q, bq, 3), _blocks(qs, bq), _blocks(dout, bq, 3)
  kb, vb, ksb = _blocks(k, bk, 2), _blocks(v, bk, 2), _blocks(ks, bk)
  lseb, deltab = _blocks(lse, bq, 3), _blocks(delta, bq, 3)  # (nq, B, Hkv, G, bq)
  nq, nk = qb.shape[0], kb.shape[0]

  def probs(qi, kj, mask, lse_i, do_i, vj, delta_i):
    p = jnp.exp(_scores(qi, kj, mask) - lse_i[..., None])
    dp = jnp.einsum("bkgqd,bksd->bkgqs", do_i, vj, preferred_element_type=jnp.float32)
    return p, p * (dp - delta_i[..., None])

  # One pass over the score blocks, as in FlashAttention-2's backward: KV blocks outside, query
  # blocks inside, dK and dV accumulated per KV block and dQ in a (T x D) carry, so each visible
  # block's scores and probabilities are formed once (a separate dQ pass formed them twice).
  def kv_block(dq, xs):
    kj, vj, ksj, j = xs

    def step(carry, ys):
      qi, qsi, do_i, lse_i, delta_i, i = ys
      mask = _block_mask(qsi, ksj, i, j, bq, bk, q_offset, causal)

      def add(carry):
        dk, dv, dq = carry
        p, ds = probs(qi, kj, mask, lse_i, do_i, vj, delta_i)
        # Contracted over the queries as (D x bk), the transposed operand the small (bq x D) one.
        dv = dv + jnp.einsum("bkgqd,bkgqs->bkds", do_i, p.astype(do_i.dtype), preferred_element_type=jnp.float32)
        dk = dk + jnp.einsum("bkgqd,bkgqs->bkds", qi, ds.astype(qi.dtype), preferred_element_type=jnp.float32)
        dqi = jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
        return dk, dv, dq.at[i].add(dqi)

      return jax.lax.cond(jnp.any(mask), add, lambda c: c, carry), None

    zeros = jnp.zeros(kj.shape[:2] + kj.shape[:1:-1], jnp.float32)  # (B, Hkv, D, bk)
    (dk, dv, dq), _ = jax.lax.scan(step, (zeros, zeros, dq), (qb, qsb, dob, lseb, deltab, jnp.arange(nq)))
    return dq, (jnp.swapaxes(dk, -1, -2).astype(k.dtype), jnp.swapaxes(dv, -1, -2).astype(v.dtype))

  dq, (dk, dv) = jax.lax.scan(kv_block, jnp.zeros(qb.shape, jnp.float32), (kb, vb, ksb, jnp.arange(nk)))
  # d(scaled q): the caller applies the scale.
  return _unblock(dq, 3).astype(q.dtype), _unblock(dk, 2), _unblock(dv, 2), None, None, None


_chunked_core.defvjp(_chunked_fwd, _chunked_bwd)


def _chunked(q, k, v, qs, ks, q_offset, causal: bool, bq: int, bk: int):
  t = q.shape[1]
  # Padded queries see only padded keys (or none: such rows come out as zeros); both are sliced off.
  q, qs = _pad_axis(q, 1, bq, 0), _pad_axis(qs, 1, bq, _PAD_SEGMENT)
  k, v, ks = _pad_axis(k, 1, bk, 0), _pad_axis(v, 1, bk, 0), _pad_axis(ks, 1, bk, _PAD_SEGMENT)
  qh = jnp.moveaxis(q, 1, 3) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  out = _chunked_core(qh, jnp.moveaxis(k, 1, 2), jnp.moveaxis(v, 1, 2), qs, ks, causal, bq, bk, q_offset)
  return jnp.moveaxis(out, 3, 1)[:, :t]


# ----------------------------------------------------------------------------------------------
# cudnn (GPU)
# ----------------------------------------------------------------------------------------------


def _check_cudnn(dtype, head_dim: int):
  if not cudnn_supports(dtype, head_dim):
    raise ValueError(f"model.attention='cudnn': cuDNN's flash kernel takes bfloat16 or float16 activations and "
                     f"a head size that is a multiple of 8 up to 256, not {jnp.dtype(dtype)} (model.dtype) with "
                     f"head size {head_dim}; use model.attention=auto, which runs chunked there")


def _even_lengths(q, k, v, qs, ks):
  """q, k, v and their segment ids padded to even lengths, which cuDNN requires with a bias (its
  check counts the packed layout as one): one position, in a segment no real token has, is cheaper
  than a check on the trace."""
  q, k, v = (_pad_axis(x, 1, 2, 0) for x in (q, k, v))
  return q, k, v, _pad_axis(qs, 1, 2, _PAD_SEGMENT), _pad_axis(ks, 1, 2, _PAD_SEGMENT)


def _cudnn(q, k, v, qs, ks, causal: bool, q_offset):
  b, t, hkv, g, d = q.shape
  s = k.shape[1]
  on_gpu = _platform() == "gpu"
  if on_gpu:
    _check_cudnn(q.dtype, d)
  # A static causal rule is passed on as well, so cuDNN can skip the blocks above the diagonal.
  static_causal = causal and isinstance(q_offset, int) and q_offset == 0 and t == s
  q, k, v, qs, ks = _even_lengths(q, k, v, qs, ks)
  tp = q.shape[1]
  mask = visible(qs, ks, causal, q_offset)[:, None]  # (B, 1, T, S), broadcast over heads
  # Query head kv * G + g attends with KV head kv: the grouping jax.nn.dot_product_attention uses.
  out = jax.nn.dot_product_attention(q.reshape(b, tp, hkv * g, d), k, v, mask=mask, is_causal=static_causal,
                                     implementation="cudnn" if on_gpu else "xla")
  return out.reshape(b, tp, hkv, g, d)[:, :t]


def segment_runs(segment_ids, max_runs: int):
  """The runs of equal ids along each row as cuDNN's packed layout takes them: start offsets
  (B, max_runs + 1) and lengths (B, max_runs), -1 past a row's last run; and (B, N) whether each
  position is in one of the first max_runs runs."""
  b, n = segment_ids.shape
  starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  run = jnp.cumsum(starts, axis=1, dtype=jnp.int32) - 1  # (B, N): the run each position is in
  slot = jnp.where(starts & (run < max_runs), run, max_runs + 1)  # out of range: dropped
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  offsets = jnp.full((b, max_runs + 1), -1, jnp.int32).at[jnp.arange(b)[:, None], slot].set(pos, mode="drop")
  sizes = jnp.zeros((b, max_runs), jnp.int32).at[jnp.arange(b)[:, None], run].add(1, mode="drop")
  return offsets, jnp.where(jnp.arange(max_runs)[None] <= run[:, -1:], sizes, -1), run < max_runs


def _packed_visible(offsets, lengths, n: int, causal: bool):
  """(B, N, N) bool: what cuDNN's packed layout lets each position see (its run, causally within
  it); XLA's stand-in for the kernel off a GPU, built from the same offsets and lengths."""
  p = jnp.arange(n)
  inside = (p >= offsets[:, :-1, None]) & (p < offsets[:, :-1, None] + lengths[:, :, None]) & (lengths[:, :, None] > 0)
  rid = jnp.where(inside.any(1), jnp.argmax(inside, axis=1), -1)  # (B, N)
  mask = (rid[:, :, None] == rid[:, None, :]) & (rid[:, :, None] >= 0)
  if causal:
    mask &= p[None, None, :] <= p[None, :, None]
  return mask


def _cudnn_packed(q, k, v, seg, causal: bool, max_runs: int):
  if causal:
    return _cudnn_runs(q, k, v, seg, True, max_runs)
  # Order does not matter without the causal rule: sorted by id, every id is one run.
  b, t = seg.shape
  order = jnp.argsort(seg, axis=1, stable=True)
  rows = jnp.arange(b)[:, None]
  out = _cudnn_runs(q[rows, order], k[rows, order], v[rows, order], seg[rows, order], False, max_runs)
  inverse = jnp.zeros_like(order).at[rows, order].set(jnp.arange(t, dtype=order.dtype))
  return out[rows, inverse]


def _cudnn_runs(q, k, v, seg, causal: bool, max_runs: int):
  b, t, hkv, g, d = q.shape
  on_gpu = _platform() == "gpu"
  if on_gpu:
    _check_cudnn(q.dtype, d)
    try:  # the packed ("THD") layout: jax.nn.dot_product_attention takes one length per row, not runs
      from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
    except ImportError:
      logging.warning("this JAX has no cuDNN packed layout: cudnn attention goes through a (T x S) mask")
      return _cudnn(q, k, v, seg, seg, causal, 0)
  q, k, v, seg, _ = _even_lengths(q, k, v, seg, seg)  # an odd row's padding position: a run of its own
  max_runs += t % 2
  tp = q.shape[1]
  offsets, lengths, covered = segment_runs(seg, max_runs)
  q4 = q.reshape(b, tp, hkv * g, d)
  if on_gpu:
    mask_type = cudnn_fa.MaskType.PADDING_CAUSAL if causal else cudnn_fa.MaskType.PADDING
    out = cudnn_fa.dot_product_attention(q4, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets,
                                         kv_offsets=offsets, scale=d ** -0.5, mask_type=mask_type)
  else:  # XLA's stand-in, built from the same offsets and lengths
    out = jax.nn.dot_product_attention(q4, k, v, mask=_packed_visible(offsets, lengths, tp, causal)[:, None],
                                       implementation="xla")
  # A row with more runs than promised leaves its last positions out of every packed sequence: NaN
  # there, so a broken layout fails loudly instead of computing wrong.
  out = jnp.where(covered[:, :, None, None], out, jnp.nan)
  return out.reshape(b, tp, hkv, g, d)[:, :t]


# ----------------------------------------------------------------------------------------------
# splash (Pallas, TPU)
# ----------------------------------------------------------------------------------------------


def _splash_block(n: int, block: int) -> int:
  """A splash tile: a multiple of 128 lanes, at most `block`."""
  return min(max(128, block // 128 * 128), -(-n // 128) * 128)


# The Mosaic kernels declare no cost, so XLA's cost analysis leaves them out. Each call names its
# work in a scope that the compiled HLO keeps on every kernel it becomes (forward, remat, dq, dkv):
# `launch/compile.py` adds it to the compiler's figures (`zwz_jax.aot.kernel_cost`).
SPLASH_COST_SCOPE = "splash_cost"
# Matmuls per computed score block, relative to the forward's two (QK^T, PV): the dq kernel
# recomputes the scores and forms dP and dQ; the dkv kernel recomputes them and forms dP, dV, dK.
SPLASH_PHASES = {"fwd": 1.0, "dq": 1.5, "dkv": 2.0}


def _splash_blocks(tp: int, sp: int, bq: int, bk: int, causal: bool) -> int:
  """Score blocks a splash kernel computes: those its static mask leaves visible (segment ids mask
  inside a block but skip nothing)."""
  nq, nk = tp // bq, sp // bk
  if not causal:
    return nq * nk
  return sum(min(nk, -(-(i + 1) * bq // bk)) for i in range(nq))


def _splash(q, k, v, qs, ks, causal: bool, block: int):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  b, t, hkv, g, d = q.shape
  precision = jax.config.jax_default_matmul_precision
  if q.dtype != jnp.float32 and precision not in (None, "default", "bfloat16", "fastest"):
    # Mosaic cannot run a bfloat16 matmul at float32 precision ("Bad lhs type").
    raise ValueError(f"model.attention=splash with {q.dtype} inputs needs the default matmul precision; "
                     f"jax_default_matmul_precision is {precision!r}")
  s = k.shape[1]
  bq, bk = _splash_block(t, block), _splash_block(s, block)
  # The kernel does not scale: fold 1/sqrt(d) into the queries (in float32, then back).
  q = (q.astype(jnp.float32) * d**-0.5).astype(q.dtype)
  q, qs = _pad_axis(q, 1, bq, 0), _pad_axis(qs, 1, bq, _PAD_SEGMENT)
  k, v, ks = _pad_axis(k, 1, bk, 0), _pad_axis(v, 1, bk, 0), _pad_axis(ks, 1, bk, _PAD_SEGMENT)
  tp, sp = q.shape[1], k.shape[1]
  head_mask = sa.CausalMask((tp, sp)) if causal else sa.FullMask((tp, sp))
  sizes = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                        block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sa.make_splash_mqa(sa.MultiHeadMask([head_mask] * g), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=_platform() != "tpu")

  blocks = _splash_blocks(tp, sp, bq, bk, causal)

  def local(q, k, v, qs, ks):
    # One MQA kernel call per (example, KV head): the G query heads of a group share its keys.
    per_head = jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sa.SegmentIds(qs, ks)),
                        in_axes=(0, 0, 0, None, None))
    heads = math.prod(q.shape[:3])  # this device's examples x KV heads x group
    flops = 4 * heads * blocks * bq * bk * d
    # Q and O stream once per head, a K and a V tile per computed block.
    nbytes = q.dtype.itemsize * heads * d * (2 * tp + 2 * blocks * bk)
    with jax.named_scope(f"{SPLASH_COST_SCOPE}_{flops}_{nbytes}"):
      return jax.vmap(per_head)(q, k, v, qs, ks)

  q = jnp.transpose(q, (0, 2, 3, 1, 4))  # (B, Hkv, G, T, D)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, Hkv, S, D)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = local(q, k, v, qs, ks)
  else:
    # Always inside shard_map: XLA cannot partition a Mosaic kernel itself, not even a replicated one
    # (an eval batch that does not divide the mesh runs whole on every device).
    batch, heads = _manual_axes(b, hkv)
    qkv = PartitionSpec(batch, heads)
    out = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, PartitionSpec(batch), PartitionSpec(batch)),
                        out_specs=qkv, check_vma=False)(q, k, v, qs, ks)
  return jnp.transpose(out, (0, 3, 1, 2, 4))[:, :t]


def _manual_axes(b: int, hkv: int):
  """Mesh axes the splash call is split over: the batch over data x fsdp and the KV heads over
  tensor, each only where the mesh has it and divides the dimension (else kept whole)."""
  mesh = jax.sharding.get_abstract_mesh()
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  batch = tuple(a for a in ("data", "fsdp") if sizes.get(a, 1) > 1)
  if not batch or b % math.prod(sizes[a] for a in batch):
    batch = None
  heads = "tensor" if sizes.get("tensor", 1) > 1 and hkv % sizes["tensor"] == 0 else None
  return batch, heads
