"""Batched generation with a KV cache: prefill the prompts (with their images), then decode.

Prompts are left-padded (`batch.build_batch(..., pad_side="left")`) so every row writes its next
token into the same cache slot. Greedy or temperature / top-p sampling, stop tokens per row, and
one compiled program per (batch shape, max_new_tokens): the same sampler serves evaluation and RL
rollouts. Runs sharded when called under `jax.set_mesh` with sharded parameters and inputs.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zwz_jax.train.sft import MODEL_INPUTS


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 32
  temperature: float = 0.0  # 0 = greedy
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0


def _sample(logits, rng, temperature: float, top_p: float):
  """Next token from (B, V) logits."""
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    # Keep the smallest set of tokens whose probability reaches top_p (always the top one).
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _generate(graphdef, state, batch, rng, cfg: SamplingConfig):
  model = nnx.merge(graphdef, state)
  b, l = batch["input_ids"].shape
  steps = cfg.max_new_tokens
  cache = model.init_cache(b, l + steps)
  key_mask = jnp.concatenate([batch["attention_mask"].astype(bool), jnp.ones((b, steps), bool)], axis=1)
  logits, cache = model.forward_cached(
      batch["input_ids"], batch["positions"], key_mask, cache, 0, batch["pixel_values"],
      batch["vision_positions"], batch["vision_segment_ids"], batch["image_token_index"])
  # Generated tokens continue the text positions after the prompt's largest M-RoPE id.
  valid = batch["attention_mask"].astype(bool)[None]
  next_pos = jnp.max(jnp.where(valid, batch["positions"], -1), axis=(0, 2)) + 1  # (B,)
  stop = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)
  rng, first = jax.random.split(rng)
  tok = _sample(logits[:, -1], first, cfg.temperature, cfg.top_p)

  def step(carry, t):
    tok, done, cache, rng = carry
    emitted = jnp.where(done, cfg.pad_id, tok)
    done = done | jnp.isin(tok, stop)
    pos = jnp.broadcast_to((next_pos + t)[None, :, None], (3, b, 1))
    logits, cache = model.forward_cached(tok[:, None], pos, key_mask, cache, l + t)
    rng, sub = jax.random.split(rng)
    return (_sample(logits[:, 0], sub, cfg.temperature, cfg.top_p), done, cache, rng), emitted

  init = (tok, jnp.zeros((b,), bool), cache, rng)
  _, tokens = jax.lax.scan(step, init, jnp.arange(steps))
  tokens = tokens.T  # (B, steps)
  is_stop = jnp.isin(tokens, stop)
  # Length up to and including the first stop token.
  first_stop = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, steps)
  return tokens, first_stop


def generate(model: nnx.Module, batch: dict, cfg: SamplingConfig, rng: jax.Array | None = None):
  """Generates for a left-padded batch. Returns (tokens (B, max_new_tokens) np.int32, lengths (B,)).

  tokens after a row's stop token are `cfg.pad_id`; lengths count up to and including the stop.
  """
  graphdef, state = nnx.split(model)
  inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS}
  if rng is None:
    rng = jax.random.key(0)
  tokens, lengths = _generate(graphdef, state, inputs, rng, cfg)
  return np.asarray(tokens), np.asarray(lengths)


def decode_texts(tokenizer, tokens: np.ndarray, lengths: np.ndarray, stop_ids: Sequence[int] = ()) -> list[str]:
  """Generated text per row, without the stop token and special tokens."""
  out = []
  for row, n in zip(tokens, lengths):
    ids = [int(t) for t in row[:n] if int(t) not in set(stop_ids)]
    out.append(tokenizer.decode(ids, skip_special_tokens=True))
  return out
