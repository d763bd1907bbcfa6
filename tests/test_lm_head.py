"""The blockwise LM head: losses and log-probs equal the ones computed from full logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zwz_jax.train.lm_head import token_stats
from zwz_jax.train.sft import answer_loss_sums

TOL = 1e-6  # relative to the tensor's scale, fp32


def _rel(ours, ref) -> float:
  return float(jnp.max(jnp.abs(ours - ref)) / jnp.maximum(jnp.max(jnp.abs(ref)), 1e-30))


def _inputs(b=2, l=37, e=16, v=50):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(b, l, e)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(e, v)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, v, size=(b, l)), jnp.int32)
  mask = jnp.asarray(rng.random((b, l)) < 0.4, jnp.int32)
  return hidden, head, ids, mask


def _full_logits_loss(hidden, head, ids, mask, z_loss):
  """The reference: (B, L, V) logits at once."""
  logits = (hidden @ head)[:, :-1]
  targets, m = ids[:, 1:], mask[:, 1:].astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  loss = jnp.sum(nll * m) + z_loss * jnp.sum(jnp.square(lse) * m)
  return loss, jnp.sum(m), jnp.sum((jnp.argmax(logits, -1) == targets) * m)


@pytest.mark.parametrize("block", [5, 16, 512])
def test_sft_loss_from_blocks_equals_full_logits_with_gradients(block):
  hidden, head, ids, mask = _inputs()
  ours = lambda h, w: answer_loss_sums(h, lambda x: x @ w, ids, mask, z_loss=1e-3, block=block)
  want = lambda h, w: _full_logits_loss(h, w, ids, mask, 1e-3)
  for a, b in zip(ours(hidden, head), want(hidden, head)):
    assert _rel(a, b) <= TOL
  g_ours = jax.grad(lambda h, w: ours(h, w)[0], argnums=(0, 1))(hidden, head)
  g_want = jax.grad(lambda h, w: want(h, w)[0], argnums=(0, 1))(hidden, head)
  for a, b in zip(g_ours, g_want):
    assert _rel(a, b) <= TOL


def test_logprobs_and_entropy_at_a_temperature_equal_full_logits():
  hidden, head, ids, _ = _inputs()
  stats = token_stats(hidden, lambda x: x @ head, ids, temperature=0.7, block=8, entropy=True)
  logits = (hidden @ head) / 0.7
  logp = jax.nn.log_softmax(logits, axis=-1)
  assert _rel(stats["logp"], jnp.take_along_axis(logp, ids[..., None], -1)[..., 0]) <= TOL
  lse = jax.nn.logsumexp(logits, axis=-1)
  # The entropy (a logged metric) is a difference of two terms ~13x its size: fp32 gives ~1e-6.
  assert _rel(stats["entropy"], lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)) <= 1e-5


def test_only_one_block_of_logits_is_held():
  """Compiled temporaries of loss + gradient: the blockwise head holds a fraction of the full one."""
  b, l, e, v = 2, 2048, 32, 4096
  args = (jax.ShapeDtypeStruct((b, l, e), jnp.float32), jax.ShapeDtypeStruct((e, v), jnp.float32))
  ids, mask = jnp.zeros((b, l), jnp.int32), jnp.ones((b, l), jnp.int32)

  def temp(fn):
    grad = jax.jit(jax.grad(lambda h, w: fn(h, w)[0], argnums=(0, 1)))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

  full = temp(lambda h, w: _full_logits_loss(h, w, ids, mask, 0.0))
  blocks = temp(lambda h, w: answer_loss_sums(h, lambda x: x @ w, ids, mask, block=128))
  logits_bytes = b * l * v * 4
  assert full >= logits_bytes
  assert blocks <= logits_bytes / 4, (blocks, full)
