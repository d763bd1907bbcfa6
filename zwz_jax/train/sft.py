"""Supervised distillation loss: token cross-entropy on the teacher's answer only."""
from __future__ import annotations

import jax.numpy as jnp

from zwz_jax.train.lm_head import token_stats


def answer_loss_sums(hidden, logits_fn, input_ids, labels_mask, z_loss: float = 0.0, block: int = 512):
  """Summed next-token cross-entropy over answer tokens, their count, and how many the argmax gets.

  Sums (not means) so that micro-batches and hosts combine into one token-level mean.
  hidden (B, L, E): the model's final-norm hidden states (`model(..., head=False)`); logits_fn:
  the LM head (`model.logits`), applied blockwise; labels_mask (B, L) marks the answer tokens.
  """
  stats = token_stats(hidden[:, :-1], logits_fn, input_ids[:, 1:], block=block)
  mask = labels_mask[:, 1:].astype(jnp.float32)
  loss = -jnp.sum(stats["logp"] * mask)
  if z_loss:
    loss = loss + z_loss * jnp.sum(jnp.square(stats["lse"]) * mask)  # keeps the softmax normaliser near 1
  return loss, jnp.sum(mask), jnp.sum(stats["correct"] * mask)
