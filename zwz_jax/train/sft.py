"""Supervised distillation: token cross-entropy on the teacher's answer, over batches of records.

The SFT trainer is `Trainer(config, mesh, AnswerLoss(config), RecordBatches(config))`: each step
takes the next batch of prompt + answer rows from the input pipeline and makes one update.
"""
from __future__ import annotations

import hashlib

import jax.numpy as jnp
import numpy as np

from zwz_jax.data.batch import MODEL_INPUTS
from zwz_jax.sharding import ShardingError
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


class AnswerLoss:
  """The SFT objective (and every trainer's periodic eval): the answer tokens' cross-entropy."""

  batch_keys = MODEL_INPUTS + ("labels_mask",)

  def __init__(self, config):
    self.z_loss, self.block = float(config.train.z_loss), int(config.train.lm_head_block)

  def loss_sums(self, model, batch):
    hidden = model(**{k: batch[k] for k in MODEL_INPUTS}, head=False)
    loss, n, correct = answer_loss_sums(hidden, model.logits, batch["input_ids"], batch["labels_mask"],
                                        self.z_loss, block=self.block)
    return loss, n, {"correct": correct}

  def metrics(self, loss, denom, sums) -> dict:
    return {"loss": loss / denom, "accuracy": sums["correct"] / denom, "answer_tokens": denom}


class RecordBatches:
  """The SFT batch source: one batch of records from the input pipeline per step, one update on it."""

  step_name = "step"
  prompts_only = False  # the pipeline yields prompt + answer rows
  updates_per_step = 1
  headline = "loss"
  loss_key = "loss"  # the metric the run halts on when it is not finite

  def __init__(self, config):
    self.config = config

  def check(self, mesh) -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    gb, accum = self.config.data.global_batch_size, self.config.train.grad_accum_steps
    if gb % accum:
      raise ShardingError(f"data.global_batch_size={gb} is not divisible by train.grad_accum_steps={accum}")
    if (gb // accum) % n:
      raise ShardingError(
          f"the micro-batch (data.global_batch_size={gb} / train.grad_accum_steps={accum} = {gb // accum}) "
          f"does not divide over the batch axes data x fsdp = {n} of mesh {dict(mesh.shape)}")

  def collect(self, trainer, state, data_iter, step: int) -> tuple[list[dict], dict, dict]:
    local = next(data_iter)
    return [local], {}, {"batch": batch_digest(local)}


def batch_digest(local_batch: dict) -> str:
  """Fingerprint of the records in a batch (for data-order checks in logs)."""
  ids = local_batch.get("ids")
  blob = "|".join(map(str, ids)) if ids is not None else np.asarray(local_batch["input_ids"]).tobytes().hex()
  return hashlib.sha256(blob.encode()).hexdigest()[:16]
