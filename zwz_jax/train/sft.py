"""Supervised distillation loss: token cross-entropy on the teacher's answer only."""
from __future__ import annotations

import jax
import jax.numpy as jnp

MODEL_INPUTS = ("input_ids", "positions", "attention_mask", "pixel_values", "vision_positions",
                "vision_segment_ids", "image_token_index")


def answer_loss_sums(logits, input_ids, labels_mask, z_loss: float = 0.0):
  """Summed next-token cross-entropy over answer tokens, and their count.

  Sums (not means) so that micro-batches and hosts combine into one token-level mean.
  logits (B, L, V); labels_mask (B, L) marks the answer tokens to predict.
  """
  logits = logits[:, :-1].astype(jnp.float32)
  targets = input_ids[:, 1:]
  mask = labels_mask[:, 1:].astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = lse - target_logit
  loss = jnp.sum(nll * mask)
  if z_loss:
    loss = loss + z_loss * jnp.sum(jnp.square(lse) * mask)  # keeps the softmax normaliser near 1
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * mask)
  return loss, jnp.sum(mask), correct
