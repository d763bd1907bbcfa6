"""The LM head and its token statistics, blockwise over the sequence: (B, L, vocab) logits are
never held at once. Each block's logits are recomputed in the backward pass (jax.checkpoint), so
the memory of the loss is one block's logits, (B, block, vocab), whatever the length."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def token_stats(hidden, logits_fn: Callable, targets, *, temperature: float = 0.0, block: int = 512,
                entropy: bool = False) -> dict:
  """Per-token statistics of `targets` (B, L) under softmax(logits_fn(hidden) / temperature)
  (temperature 0: the unscaled logits, as the sampler), float32, each (B, L):
  logp (log-probability of the target), lse (log normaliser), correct (target is the argmax),
  and with `entropy` the entropy of the distribution (stop-gradient).
  hidden (B, L, E): the final-norm hidden states at the positions that predict `targets`."""
  b, l, _ = hidden.shape
  c = min(block, l)
  pad = -l % c
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  blocks = lambda x: jnp.moveaxis(x.reshape(b, -1, c, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def one(xs):
    h, t = xs
    logits = logits_fn(h).astype(jnp.float32)
    if temperature > 0:
      logits = logits / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    out = {"logp": picked - lse, "lse": lse, "correct": (jnp.argmax(logits, -1) == t).astype(jnp.float32)}
    if entropy:
      out["entropy"] = jax.lax.stop_gradient(lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1))
    return out

  out = jax.lax.map(one, (blocks(hidden), blocks(targets)))
  return {k: jnp.moveaxis(v, 0, 1).reshape(b, -1)[:, :l] for k, v in out.items()}
