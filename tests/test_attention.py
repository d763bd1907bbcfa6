"""The attention seam: every backend equals the dense reference, forward and gradients, on the masks
the students use; the blockwise backend's memory grows linearly in length."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zwz_jax.models import attention as attention_lib
from zwz_jax.models.layers import full_attention_segments

TOL = 1e-5  # fp32, matmul precision "highest" (conftest)
ON_GPU = jax.default_backend() == "gpu"


def _case(name: str):
  """(q, k, v, q segments, kv segments, causal, q_offset) for one use in the models."""
  rng = np.random.default_rng(len(name))
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  if name == "vision_window":  # windows folded into the batch; padding (0) at the end of some windows
    seg = np.ones((6, 16), np.int32)
    seg[1, 10:], seg[4, 3:] = 0, 0
    seg[3:] *= 2
    return normal(6, 16, 4, 1, 8), normal(6, 16, 4, 8), normal(6, 16, 4, 8), seg, seg, False, 0
  if name == "vision_full":  # one example: images of 48 and 80 patches in 16-patch windows, padded
    seg = np.concatenate([[1] * 40 + [0] * 8, [2] * 70 + [0] * 10, [0] * 32]).astype(np.int32)[None]
    seg = np.asarray(full_attention_segments(jnp.asarray(seg), 16))
    p = seg.shape[1]
    return normal(1, p, 4, 1, 8), normal(1, p, 4, 8), normal(1, p, 4, 8), seg, seg, False, 0
  if name == "vision_full_runs":  # the same layout as cuDNN's packed runs take it: padding one id
    seg = np.concatenate([[1] * 40 + [0] * 8, [2] * 70 + [0] * 10, [0] * 32]).astype(np.int32)[None]
    p = seg.shape[1]
    return normal(1, p, 4, 1, 8), normal(1, p, 4, 8), normal(1, p, 4, 8), seg, seg, False, 0
  if name in ("text_padding", "text_left_padding"):  # padded batch, grouped KV heads, causal
    seg = np.ones((2, 45), np.int32)
    seg[1, 30:] = 0
    if name == "text_left_padding":
      seg = seg[:, ::-1].copy()
    return normal(2, 45, 2, 3, 16), normal(2, 45, 2, 16), normal(2, 45, 2, 16), seg, seg, True, 0
  if name == "prefill":  # a left-padded prompt of 30 tokens into slots 0..29 of a 40-slot cache
    keys = np.zeros((2, 40), np.int32)
    keys[0, 4:30], keys[1, :30] = 1, 1
    return (normal(2, 30, 2, 3, 16), normal(2, 40, 2, 16), normal(2, 40, 2, 16), keys[:, :30], keys, True, 0)
  if name == "cached_decode":  # 3 queries at cache slots 20..22 of a 40-slot, left-padded cache
    keys = np.ones((2, 40), np.int32)
    keys[0, :5] = 0
    return (normal(2, 3, 2, 3, 16), normal(2, 40, 2, 16), normal(2, 40, 2, 16), keys[:, 20:23], keys, True,
            jnp.int32(20))
  raise KeyError(name)


CASES = ("vision_window", "vision_full", "text_padding", "text_left_padding", "prefill", "cached_decode")
TEXT = ("text_padding", "text_left_padding", "prefill")
# What the models pass as max_runs: the decoder's padding before and after its tokens (3 runs), and
# the vision tower's images (2 here) and their padding (sorted by id: 3 runs).
RUNS = {**{c: 3 for c in TEXT}, "vision_full_runs": 3}


def _rel(ours, ref) -> float:
  return float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))


def _forward_and_grads(backend: str, block: int, case, **kwargs):
  """Output and (dq, dk, dv) for a fixed random cotangent, jitted; a traced offset stays traced."""
  q, k, v, qs, ks, causal, offset = case
  static = isinstance(offset, int)

  def run(q, k, v, cotangent, traced_offset):
    f = lambda q, k, v: attention_lib.attend(q, k, v, jnp.asarray(qs), jnp.asarray(ks), causal=causal,
                                             q_offset=offset if static else traced_offset, backend=backend,
                                             block=block, **kwargs)
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(cotangent)

  cotangent = jnp.asarray(np.random.default_rng(7).normal(size=q.shape), q.dtype)
  return jax.jit(run)(q, k, v, cotangent, jnp.int32(offset))


# cudnn off a GPU runs XLA's implementation of the same jax.nn.dot_product_attention call: this
# checks the mask and head grouping we hand it, not the kernel.
@pytest.mark.parametrize("backend,block", [("chunked", 8), ("chunked", 512), ("splash", 128), ("cudnn", 512)])
@pytest.mark.parametrize("name", CASES)
def test_backend_equals_dense_forward_and_gradients(name, backend, block):
  case = _case(name)
  if backend == "cudnn" and ON_GPU:
    pytest.skip("on a GPU cudnn runs cuDNN's kernel, which takes 16-bit inputs: tested below")
  if backend == "splash" and not isinstance(case[-1], int):
    pytest.skip("splash serves static offsets; cached decode steps go blockwise (tested above)")
  ref_out, ref_grads = _forward_and_grads("dense", block, case)
  out, grads = _forward_and_grads(backend, block, case)
  assert _rel(out, ref_out) <= TOL
  for name_, g, ref in zip("qkv", grads, ref_grads):
    assert _rel(g, ref) <= TOL, f"d{name_}"


@pytest.mark.skipif(not ON_GPU, reason="cuDNN's kernel runs on a GPU (elsewhere cudnn is XLA's, tested above)")
@pytest.mark.parametrize("name,max_runs", [(c, None) for c in CASES] + list(RUNS.items()))
def test_cudnn_kernel_on_gpu_is_as_close_to_float32_as_dense_in_bfloat16(name, max_runs):
  """cuDNN's flash kernel (bf16 only) against the fp32 dense reference, forward and gradients: within
  twice the error of dense run on the same bf16 inputs, so a wrong mask, head grouping or padding
  (errors of order 1) cannot pass; and the compiled program calls cuDNN, not a fallback."""
  q, k, v, *rest = _case(name)
  half = tuple(x.astype(jnp.bfloat16) for x in (q, k, v)) + tuple(rest)
  ref = _forward_and_grads("dense", 512, tuple(x.astype(jnp.bfloat16).astype(jnp.float32) for x in (q, k, v))
                           + tuple(rest))
  dense, cudnn = _forward_and_grads("dense", 512, half), _forward_and_grads("cudnn", 512, half, max_runs=max_runs)
  flat = lambda r: [r[0], *r[1]]
  for what, c, d, r in zip(("out", "dq", "dk", "dv"), flat(cudnn), flat(dense), flat(ref)):
    c, d = c.astype(jnp.float32), d.astype(jnp.float32)
    assert _rel(c, r) <= 2 * _rel(d, r) + 1e-3, (what, _rel(c, r), _rel(d, r))
  qs, ks, causal, offset = rest
  hlo = jax.jit(lambda q, k, v: attention_lib.attend(q, k, v, jnp.asarray(qs), jnp.asarray(ks), causal=causal,
                                                     q_offset=offset, backend="cudnn", max_runs=max_runs)).lower(*half[:3])
  assert "cudnn$fmha" in hlo.compile().as_text()


def test_segment_runs_as_cudnn_packs_them():
  seg = jnp.asarray([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1],
                     [3, 0, 4, 0, 5, 5]])
  offsets, lengths, covered = attention_lib.segment_runs(seg, 3)
  np.testing.assert_array_equal(offsets, [[0, 3, -1, -1], [0, 2, -1, -1], [0, 1, 5, -1], [0, -1, -1, -1],
                                          [0, 1, 2, -1]])  # the last row has 5 runs: 3 kept
  np.testing.assert_array_equal(lengths, [[3, 3, -1], [2, 4, -1], [1, 4, 1], [6, -1, -1], [1, 1, 1]])
  np.testing.assert_array_equal(covered[:4], True)
  np.testing.assert_array_equal(covered[4], [True, True, True, False, False, False])
  # Attention over that row with max_runs=3 is NaN where no packed sequence covers it, not wrong.
  x = jnp.ones((5, 6, 1, 1, 8), jnp.float32)
  out = attention_lib.attend(x, x[:, :, :, 0], x[:, :, :, 0], seg, seg, causal=True, backend="cudnn", max_runs=3)
  assert bool(jnp.isnan(out[4, 3:]).all()) and bool(jnp.isfinite(out[:4]).all() & jnp.isfinite(out[4, :3]).all())
  # Without the causal rule the row is sorted by id first (0 0 3 4 5 5): the ids past the first
  # three, 5 at positions 4 and 5, are the ones left out, wherever they stand.
  out = attention_lib.attend(x, x[:, :, :, 0], x[:, :, :, 0], seg, seg, causal=False, backend="cudnn", max_runs=3)
  np.testing.assert_array_equal(jnp.isnan(out[4, :, 0, 0, 0]), [False] * 4 + [True] * 2)
  assert bool(jnp.isfinite(out[:4]).all())


@pytest.mark.skipif(ON_GPU, reason="on a GPU cudnn is cuDNN's kernel (bf16 only), tested above")
@pytest.mark.parametrize("name", list(RUNS))
def test_cudnn_packed_runs_equal_dense(name):
  """The models' calls with max_runs (the decoder; the vision tower's full attention, whose images'
  patches are split by window padding until sorted by id): each run of equal ids a packed sequence.
  Off a GPU the mask is rebuilt from the same offsets and lengths that cuDNN takes, so this checks
  them, and the sort and its inverse."""
  case = _case(name)
  ref_out, ref_grads = _forward_and_grads("dense", 512, case)
  with mock.patch.object(attention_lib, "_cudnn", side_effect=AssertionError("took the (T x S) mask path")):
    out, grads = _forward_and_grads("cudnn", 512, case, max_runs=RUNS[name])
  assert _rel(out, ref_out) <= TOL
  for name_, g, ref in zip("qkv", grads, ref_grads):
    assert _rel(g, ref) <= TOL, f"d{name_}"


def test_cudnn_needs_half_precision_on_gpu_and_auto_falls_back_to_chunked():
  with mock.patch.object(attention_lib, "_platform", lambda: "gpu"):
    assert attention_lib.resolve("auto", 4096, 4096, jnp.bfloat16, 80) == "cudnn"
    assert attention_lib.resolve("auto", 4096, 4096, jnp.float32, 80) == "chunked"
    assert attention_lib.resolve("auto", 4096, 4096, jnp.bfloat16, 12) == "chunked"
    x = jnp.zeros((1, 4, 1, 1, 8), jnp.float32)
    seg = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="model.attention='cudnn'.*float32"):
      attention_lib.attend(x, x[:, :, :, 0], x[:, :, :, 0], seg, seg, backend="cudnn")


@pytest.mark.parametrize("name", CASES)
def test_dense_backward_equals_autodiff_of_the_textbook_formula(name):
  """dense, the reference the other backends are held to, has a written-out backward: it must equal
  autodiff of softmax(masked q k^T / sqrt(d)) v, head grouping as transformers' repeat_kv."""
  q, k, v, qs, ks, causal, offset = case = _case(name)

  def textbook(q, k, v, cotangent):
    def f(q, k, v):
      b, t, hkv, g, d = q.shape
      kr, vr = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)  # (B, S, H, D), head h = kv * g + j
      scores = jnp.einsum("bthd,bshd->bhts", q.reshape(b, t, hkv * g, d), kr) / np.sqrt(d)
      mask = attention_lib.visible(jnp.asarray(qs), jnp.asarray(ks), causal, offset)
      probs = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
      return jnp.einsum("bhts,bshd->bthd", probs, vr).reshape(q.shape)
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(cotangent)

  cotangent = jnp.asarray(np.random.default_rng(7).normal(size=q.shape), jnp.float32)
  ref_out, ref_grads = jax.jit(textbook)(q, k, v, cotangent)
  out, grads = _forward_and_grads("dense", 512, case)
  assert _rel(out, ref_out) <= TOL
  for name_, g, ref in zip("qkv", grads, ref_grads):
    assert _rel(g, ref) <= TOL, f"d{name_}"


@pytest.mark.parametrize("name", CASES)
def test_dense_forward_in_query_blocks_equals_one_block(name):
  """Outside differentiation, dense runs its queries in blocks on CPU: the same rows as one block.
  Under the causal rule at a static offset each block takes the keys up to its last query only, so
  the upper triangle's scores are never computed."""
  q, k, v, qs, ks, causal, offset = _case(name)
  # A new function per setting: jit would reuse the trace made under the other one.
  attend = lambda: jax.jit(lambda q, k, v: attention_lib.attend(
      q, k, v, jnp.asarray(qs), jnp.asarray(ks), causal=causal, q_offset=offset, backend="dense"))
  flops = lambda f: f.lower(q, k, v).compile().cost_analysis()["flops"]
  with mock.patch.object(attention_lib, "DENSE_QUERY_BLOCK", 1 << 30):
    f = attend()
    one, one_flops = f(q, k, v), flops(f)
  with mock.patch.multiple(attention_lib, DENSE_QUERY_BLOCK=8, DENSE_BLOCKED_SCORES=0,  # 45 and 3 pad
                           _platform=lambda: "cpu"):
    f = attend()
    if q.shape[1] > 8 and causal:  # blocks of 8 over 30-45 queries: at most 0.55 of the square, + 1 block
      # Unrolled, each block over its own keys (the cost analysis counts a loop's body once).
      assert "while" not in f.lower(q, k, v).as_text() and flops(f) < 0.75 * one_flops
    elif q.shape[1] > 8:
      assert "while" in f.lower(q, k, v).as_text()
    np.testing.assert_allclose(f(q, k, v), one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_query_probs_are_the_rows_of_the_textbook_probabilities(name):
  """Coverage's probabilities of one query per row equal that row of softmax(masked q k^T / sqrt(d)),
  head order as transformers' repeat_kv."""
  q, k, v, qs, ks, causal, offset = _case(name)
  b, t, hkv, g, d = q.shape
  scores = jnp.einsum("bthd,bshd->bhts", q.reshape(b, t, hkv * g, d), jnp.repeat(k, g, axis=2)) / np.sqrt(d)
  mask = attention_lib.visible(jnp.asarray(qs), jnp.asarray(ks), causal, offset)
  textbook = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
  query = jnp.asarray(np.random.default_rng(3).integers(0, t, b), jnp.int32)
  probs = attention_lib.query_probs(q, k, jnp.asarray(qs), jnp.asarray(ks), query, causal=causal, q_offset=offset)
  want = textbook[jnp.arange(b), :, query]  # (B, H, S)
  assert _rel(probs.reshape(b, hkv * g, -1), want) <= TOL


def test_query_probs_hold_one_row_not_the_score_matrix():
  """At 4,096 tokens a (T x S) float32 score matrix of 4 heads is 268 MB; one query row per example
  needs a sliver of it."""
  t, hkv, g, d = 4096, 2, 2, 64
  spec = jax.ShapeDtypeStruct
  q, k = spec((1, t, hkv, g, d), jnp.float32), spec((1, t, hkv, d), jnp.float32)
  seg, query = spec((1, t), jnp.int32), spec((1,), jnp.int32)
  probs = jax.jit(lambda q, k, seg, query: attention_lib.query_probs(q, k, seg, seg, query, causal=True))
  temp = probs.lower(q, k, seg, query).compile().memory_analysis().temp_size_in_bytes
  assert temp < hkv * g * t * t * 4 / 64


def test_chunked_skips_no_visible_pair_and_pads_to_blocks():
  """Lengths that are not block multiples, and a causal block pattern with skipped blocks, still
  equal dense; one query sees one key (the first) exactly."""
  case = _case("text_padding")
  for block in (7, 16, 44):
    out, _ = _forward_and_grads("chunked", block, case)
    ref, _ = _forward_and_grads("dense", block, case)
    assert _rel(out, ref) <= TOL, block
  q, k, v, *_ = case
  out = attention_lib.attend(q, k, v, jnp.ones((2, 45)), jnp.ones((2, 45)), causal=True, backend="chunked", block=8)
  np.testing.assert_allclose(out[:, 0], jnp.broadcast_to(v[:, 0, :, None], out[:, 0].shape), rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's differentiated path")
@pytest.mark.parametrize("name", CASES)
def test_auto_on_cpu_is_dense_evaluated_and_blockwise_differentiated(name):
  """With blocks of 8 (every case spans several), auto evaluates with dense and differentiates
  blockwise: both equal dense, forward and gradients."""
  case = _case(name)
  q, k, v, qs, ks, causal, offset = case
  with mock.patch.object(attention_lib, "CPU_GRAD_BLOCKS", (8, 8)):
    out, grads = _forward_and_grads("auto", 512, case)
    f = lambda q, k, v: attention_lib.attend(q, k, v, jnp.asarray(qs), jnp.asarray(ks), causal=causal,
                                             q_offset=offset)
    evaluated = str(jax.make_jaxpr(f)(q, k, v))
    differentiated = str(jax.make_jaxpr(lambda *a: jax.vjp(f, *a)[1](out))(q, k, v))
  ref_out, ref_grads = _forward_and_grads("dense", 512, case)
  assert _rel(out, ref_out) <= TOL
  for name_, g, ref in zip("qkv", grads, ref_grads):
    assert _rel(g, ref) <= TOL, f"d{name_}"
  # The blockwise kernel's mark: a cond that skips blocks without a visible pair.
  assert "cond" not in evaluated
  assert "cond" in differentiated


def test_auto_block_on_cpu_cuts_the_keys_in_four_or_more():
  blocks = [attention_lib._cpu_grad_block(s) for s in (65, 320, 512, 1023, 1024, 2048, 92800)]
  assert blocks == [64, 64, 128, 128, 256, 512, 512]


def test_auto_resolves_by_shape_and_platform():
  assert attention_lib.resolve("auto", 1, 100_000) == "dense"  # one decode query
  assert attention_lib.resolve("auto", 512, 512) == "dense"
  assert attention_lib.resolve("splash", 1, 1) == "splash"
  for platform, long in (("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "chunked")):
    with mock.patch.object(attention_lib, "_platform", lambda p=platform: p):
      assert attention_lib.resolve("auto", 4096, 4096) == long
      assert attention_lib.resolve("auto", 512, 512) == "dense"
  with pytest.raises(ValueError, match="model.attention='flash'"):
    attention_lib.Attention("flash")


def _temp_bytes(backend: str, length: int) -> int:
  shape = (1, length, 2, 2, 32)
  q = jax.ShapeDtypeStruct(shape, jnp.float32)
  kv = jax.ShapeDtypeStruct((1, length, 2, 32), jnp.float32)
  seg = jax.ShapeDtypeStruct((1, length), jnp.int32)

  def loss(q, k, v, seg):
    return jnp.sum(attention_lib.attend(q, k, v, seg, seg, causal=True, backend=backend, block=256) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's temporaries (on an H200 XLA:GPU's dense "
                    "grows 8.5x from 1K to 4K, chunked within 4.5x)")
def test_chunked_memory_grows_linearly_dense_quadratically():
  chunked = _temp_bytes("chunked", 4096) / _temp_bytes("chunked", 1024)
  dense = _temp_bytes("dense", 4096) / _temp_bytes("dense", 1024)
  assert chunked <= 4.5, chunked
  assert dense >= 12, dense
  # Differentiated on CPU, auto is blockwise even at 1,024, where it evaluates with dense: it holds
  # less than one float32 (T x S) score matrix per query head (dense: two).
  scores = 4 * 4 * 1024 * 1024
  assert _temp_bytes("auto", 1024) < scores < _temp_bytes("dense", 1024)
