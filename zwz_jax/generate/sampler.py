"""Batched generation with a KV cache: prefill the prompts (with their images), then decode.

Prompts are left-padded (`batch.build_batch(..., pad_side="left")`) so every row writes its next
token into the same cache slot. Greedy or temperature / top-k / top-p sampling with an optional
presence penalty (vLLM's order and meaning: the settings Qwen recommends and the ZwZ authors
evaluate with), stop tokens per row, and one compiled program per (batch shape, sampling config):
the same sampler serves evaluation and RL rollouts. For rollouts, `num_samples` > 1 prefills each prompt (images included) once and copies its
KV cache to the samples, and the log-probability of every sampled token under the sampling
distribution is returned. Runs sharded when called under `jax.set_mesh` with sharded parameters
and inputs.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zwz_jax.data.batch import MODEL_INPUTS


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 32
  temperature: float = 0.0  # 0 = greedy
  top_p: float = 1.0
  top_k: int = 0  # 0 = every token
  # Subtracted from the logit of every token the row has generated so far (not the prompt's), as in
  # vLLM and the OpenAI API; applies to greedy decoding too.
  presence_penalty: float = 0.0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0


def token_logprobs(logits, tokens, temperature: float):
  """log p(token) under softmax(logits / temperature) (temperature 0: the unscaled logits), float32.

  The sampler and the RL trainer both use this, so their log-probs are the same function; they are
  taken before the presence penalty and top-k / top-p, which the trainer's forward does not apply."""
  logits = logits.astype(jnp.float32)
  if temperature > 0:
    logits = logits / temperature
  picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def sampling_logits(logits, cfg: SamplingConfig, generated=None):
  """(B, V) logits -> the logits the next token is drawn from, float32: the presence penalty on the
  tokens each row has generated (`generated`, (B, V) bool), then (when sampling) temperature, top-k
  and top-p, in vLLM's order. Filtered tokens are -inf; ties at the top-k boundary are kept."""
  logits = logits.astype(jnp.float32)
  if cfg.presence_penalty and generated is not None:
    logits = logits - cfg.presence_penalty * generated.astype(jnp.float32)
  if cfg.temperature <= 0:
    return logits
  logits = logits / cfg.temperature
  if 0 < cfg.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if cfg.top_p < 1.0:
    # Keep the smallest set of tokens whose probability reaches top_p (always the top one).
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_index = jnp.sum(cum < cfg.top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def _sample(logits, rng, cfg: SamplingConfig, generated=None):
  """Next token from (B, V) logits; `rng` is one key, or one key per row ((B,) keys)."""
  logits = sampling_logits(logits, cfg, generated)
  if cfg.temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if rng.ndim:
    return jax.vmap(lambda k, row: jax.random.categorical(k, row))(rng, logits).astype(jnp.int32)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _split(rng):
  """(carried key, key for this draw) of one key or of each row's key."""
  if rng.ndim:
    pair = jax.vmap(jax.random.split)(rng)
    return pair[:, 0], pair[:, 1]
  return tuple(jax.random.split(rng))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "num_samples"))
def _generate(graphdef, state, batch, rng, cfg: SamplingConfig, num_samples: int = 1):
  model = nnx.merge(graphdef, state)
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)  # raw key data: (2,) or (B, 2) uint32
  b, l = batch["input_ids"].shape
  steps = cfg.max_new_tokens
  cache = model.init_cache(b, l + steps)
  key_mask = jnp.concatenate([batch["attention_mask"].astype(bool), jnp.ones((b, steps), bool)], axis=1)
  # The LM head at each prompt's last position only (prompts are left-padded): over the whole
  # prompt it would hold (B, L, vocab) logits: 5 GB in bfloat16 per 16K-token prompt at Qwen's vocabulary.
  hidden, cache = model(
      batch["input_ids"], batch["positions"], key_mask, batch["pixel_values"], batch["vision_positions"],
      batch["vision_segment_ids"], batch["image_token_index"], cache=cache, cache_index=0, head=False)
  logits = model.logits(hidden[:, -1:])[:, 0]
  # Generated tokens continue the text positions after the prompt's largest M-RoPE id.
  valid = batch["attention_mask"].astype(bool)[None]
  next_pos = jnp.max(jnp.where(valid, batch["positions"], -1), axis=(0, 2)) + 1  # (B,)
  if num_samples > 1:  # samples of one prompt share its prefill: rows i*n .. i*n+n-1 are prompt i
    rep = lambda x: jnp.repeat(x, num_samples, axis=0)
    cache = cache.repeat(num_samples)
    logits, key_mask, next_pos = rep(logits), rep(key_mask), rep(next_pos)
    if rng.ndim:  # a key per prompt: its samples fold in their index
      rng = jax.vmap(jax.random.fold_in)(rep(rng), jnp.tile(jnp.arange(num_samples), b))
    b *= num_samples
  stop = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)
  rng, first = _split(rng)
  tok = _sample(logits, first, cfg)
  logp = token_logprobs(logits, tok, cfg.temperature)
  # Which tokens each row has generated, for the presence penalty (a (B, 1) placeholder without one).
  generated = jnp.zeros((b, logits.shape[-1] if cfg.presence_penalty else 1), bool)

  def emit(tok, logp, done):
    """The token a row outputs (pad after its stop), its log-prob, and whether the row is done."""
    return jnp.where(done, cfg.pad_id, tok), jnp.where(done, 0.0, logp), done | jnp.isin(tok, stop)

  def step(carry, t):
    tok, logp, done, cache, rng, generated = carry
    emitted, emitted_logp, done = emit(tok, logp, done)
    if cfg.presence_penalty:
      generated = generated.at[jnp.arange(b), tok].set(True)
    pos = jnp.broadcast_to((next_pos + t)[None, :, None], (3, b, 1))
    logits, cache = model(tok[:, None], pos, key_mask, cache=cache, cache_index=l + t)
    rng, sub = _split(rng)
    nxt = _sample(logits[:, 0], sub, cfg, generated)
    carry = (nxt, token_logprobs(logits[:, 0], nxt, cfg.temperature), done, cache, rng, generated)
    return carry, (emitted, emitted_logp)

  # steps - 1 decode steps: the last token is emitted without the model call that would follow it.
  init = (tok, logp, jnp.zeros((b,), bool), cache, rng, generated)
  (tok, logp, done, *_), (tokens, logps) = jax.lax.scan(step, init, jnp.arange(steps - 1))
  last, last_logp, _ = emit(tok, logp, done)
  tokens = jnp.concatenate([tokens.T, last[:, None]], axis=1)  # (B, steps)
  logps = jnp.concatenate([logps.T, last_logp[:, None]], axis=1)
  is_stop = jnp.isin(tokens, stop)
  # Length up to and including the first stop token.
  first_stop = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, steps)
  return tokens, first_stop, logps


class Sampler:
  """A model split once into its graph definition and state, as flax's gemma sampler holds it:
  nnx.split walks the whole module graph (1.3 ms for the tiny model), which an evaluator or an agent
  would otherwise pay on every batch or turn. Build it again when the model's parameters change."""

  def __init__(self, model: nnx.Module):
    self.graphdef, self.state = nnx.split(model)

  def __call__(self, batch: dict, cfg: SamplingConfig, rng: jax.Array | None = None, *, num_samples: int = 1,
               return_logprobs: bool = False, to_host: bool = True):
    """Generates for a left-padded batch. Returns (tokens (B * num_samples, max_new_tokens) int32,
    lengths (B * num_samples,)) and with `return_logprobs` the sampled tokens' log-probs (float32,
    0 past the stop), as numpy (or as device arrays with to_host=False, e.g. for multi-host).

    `rng` is one key for the batch, or a key per prompt ((B,) keys, or their (B, 2) uint32 data):
    then a row's draws depend on its key alone, not on the batch it sits in or its place there.

    Rows i * num_samples ... (i + 1) * num_samples - 1 are the samples of prompt i. tokens after a
    row's stop token are `cfg.pad_id`; lengths count up to and including the stop.
    """
    # device_put, not jnp.asarray: on CPU it may alias the host rows and copies several times faster
    # (4 x 1,024 patches: 1.2 against 4-6 ms).
    inputs = {k: batch[k] if isinstance(batch[k], jax.Array) else jax.device_put(batch[k]) for k in MODEL_INPUTS}
    if rng is None:
      rng = jax.random.key(0)
    out = _generate(self.graphdef, self.state, inputs, rng, cfg, num_samples)
    if to_host:
      out = tuple(np.asarray(x) for x in out)
    return out if return_logprobs else out[:2]


def generate(model: nnx.Module, batch: dict, cfg: SamplingConfig, rng: jax.Array | None = None, **kwargs):
  """One call of `Sampler(model)` (its arguments and outputs), for a model used once, such as the
  policy of one RL step."""
  return Sampler(model)(batch, cfg, rng, **kwargs)


def decode_texts(tokenizer, tokens: np.ndarray, lengths: np.ndarray, stop_ids: Sequence[int] = ()) -> list[str]:
  """Generated text per row, without the stop token and special tokens."""
  out = []
  for row, n in zip(tokens, lengths):
    ids = [int(t) for t in row[:n] if int(t) not in set(stop_ids)]
    out.append(tokenizer.decode(ids, skip_special_tokens=True))
  return out
