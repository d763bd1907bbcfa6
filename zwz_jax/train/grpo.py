"""GRPO / DAPO reinforcement learning with verifiable rewards on the distilled records.

One RL step:
  1. rollout: `data.global_batch_size` prompts (full image with the red box, question, no answer)
     are each sampled `grpo.num_generations` times with the KV-cache sampler from the current policy
     (one prefill per prompt, temperature `grpo.temperature`), sharded like training;
  2. reward: the judge's 0/1 verdict against the record's answer (weight `reward_accuracy`), an
     optional 0/1 format reward for `<answer>...</answer>`, and DAPO's soft overlong penalty;
  3. advantages: (r - group mean) / group std per prompt (GRPO; `advantage_std=False`: r - mean);
     with dynamic sampling, groups whose rewards are all equal (no signal) are dropped and more
     prompts are sampled, up to `max_sampling_rounds`; a batch still short is padded with masked rows;
  4. update: old log-probs recomputed once by the training forward (and the frozen reference's when
     `kl_coef` > 0), then `ppo_epochs` x `num_minibatches` optimizer updates of the token-level
     clipped objective with asymmetric clipping [1 - clip_low, 1 + clip_high].

The GRPO trainer is `Trainer(config, mesh, ClippedObjective(config), RolloutCollector(config,
tokenizer))`: the state, checkpoints (state + data iterator), resume, metrics and meshes are every
trainer's (zwz_jax.train.trainer, zwz_jax.train.loop); `state["step"]` counts optimizer updates, so
the RL step is that divided by `updates_per_step`. Rollouts of step s use the key
fold_in(seed, s), so a resumed run draws the same samples as an uninterrupted one.
"""
from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from zwz_jax import answers
from zwz_jax.config import ConfigError
from zwz_jax.data import batch as batch_lib
from zwz_jax.data.batch import MODEL_INPUTS
from zwz_jax.generate import sampler as sampler_lib
from zwz_jax.params import load_params
from zwz_jax.sharding import ShardingError
from zwz_jax.train.lm_head import token_stats

ROLLOUT_KEYS = ("response", "response_mask", "old_logp", "advantages")
AGGREGATIONS = ("token", "sequence")
_ANSWER_TAGS = re.compile(r"<answer>.*?</answer>", re.S)


# ----------------------------------------------------------------------------------------------
# The objective (pure functions; numpy references in the tests)
# ----------------------------------------------------------------------------------------------


def group_advantages(rewards, num_generations: int, *, std: bool = True, eps: float = 1e-6) -> np.ndarray:
  """Per-response advantage: (r - mean of its group) / (std of its group + eps).

  rewards (G * n,) with the n responses of a prompt contiguous. The std is the unbiased one (as in
  the GRPO/DAPO reference implementations); a group with equal rewards gets advantage 0.
  """
  r = np.asarray(rewards, np.float64).reshape(-1, num_generations)
  centred = r - r.mean(axis=1, keepdims=True)
  if std:
    centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + eps)
  return centred.reshape(-1).astype(np.float32)


def informative_groups(rewards, num_generations: int) -> np.ndarray:
  """(G,) bool: the groups whose rewards are not all equal (the others carry no gradient)."""
  r = np.asarray(rewards).reshape(-1, num_generations)
  return r.max(axis=1) > r.min(axis=1)


def overlong_penalty(lengths, max_new_tokens: int, buffer: int, penalty: float = 1.0) -> np.ndarray:
  """DAPO's soft overlong punishment: 0 up to max_new_tokens - buffer, then falling linearly to
  -penalty at max_new_tokens (where generation was cut)."""
  lengths = np.asarray(lengths, np.float32)
  if buffer <= 0:
    return np.zeros_like(lengths)
  start = max_new_tokens - buffer
  return -penalty * np.clip((lengths - start) / buffer, 0.0, 1.0)


def policy_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float,
                aggregation: str = "token", ref_logp=None, kl_coef: float = 0.0):
  """Clipped policy-gradient loss (to minimise) as (sum, denominator, sums for metrics).

  logp / old_logp / ref_logp / mask (B, T) per response token; advantages (B,). Per token:
  -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + kl_coef * k3(ref || policy).
  aggregation "token": the sum over all tokens / the number of tokens (DAPO: long responses weigh
  by their length); "sequence": each response's token mean, summed / the number of responses
  (GRPO). Returning sums lets micro-batches and hosts combine into the mean over the mini-batch.
  """
  mask = mask.astype(jnp.float32)
  adv = advantages[:, None].astype(jnp.float32)
  ratio = jnp.exp(logp - old_logp)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
  per_token = -jnp.minimum(unclipped, clipped)
  sums = {"tokens": jnp.sum(mask), "clipped": jnp.sum((clipped < unclipped) * mask),
          "ratio": jnp.sum(ratio * mask)}
  if ref_logp is not None and kl_coef:
    log_r = ref_logp - logp  # k3 estimator of KL(policy || reference): unbiased, non-negative
    kl = jnp.exp(log_r) - log_r - 1.0
    per_token = per_token + kl_coef * kl
    sums["kl"] = jnp.sum(kl * mask)
  if aggregation == "token":
    return jnp.sum(per_token * mask), sums["tokens"], sums
  if aggregation == "sequence":
    lengths = jnp.sum(mask, axis=1)
    per_seq = jnp.sum(per_token * mask, axis=1) / jnp.maximum(lengths, 1.0)
    return jnp.sum(per_seq), jnp.sum(lengths > 0).astype(jnp.float32), sums
  raise ValueError(f"grpo.loss_aggregation={aggregation!r} is not one of {AGGREGATIONS}")


def has_answer_tags(text: str) -> bool:
  return bool(_ANSWER_TAGS.search(text))


# ----------------------------------------------------------------------------------------------
# Rollout sequences
# ----------------------------------------------------------------------------------------------


def response_positions(prompt_positions, prompt_mask, steps: int) -> np.ndarray:
  """M-RoPE ids (3, B, T) of generated tokens: text positions after each prompt's largest id."""
  valid = np.asarray(prompt_mask).astype(bool)[None]
  nxt = np.max(np.where(valid, prompt_positions, -1), axis=(0, 2)) + 1
  return np.broadcast_to((nxt[:, None] + np.arange(steps)[None])[None], (3, len(nxt), steps)).astype(np.int32)


def rollout_sequences(prompts: dict, tokens, lengths, num_generations: int) -> dict:
  """Prompt batch (left-padded, B rows) + sampled responses (B * n rows) -> training rows.

  Each row is its prompt followed by its response; `response_mask` marks the generated tokens up
  to and including the stop token, and the model inputs cover prompt + response.
  """
  p = batch_lib.repeat_rows({k: prompts[k] for k in MODEL_INPUTS}, num_generations)
  steps = tokens.shape[1]
  response_mask = np.arange(steps)[None] < np.asarray(lengths)[:, None]
  return {
      **p,
      "input_ids": np.concatenate([p["input_ids"], np.where(response_mask, tokens, 0)], 1).astype(np.int32),
      "positions": np.concatenate([p["positions"], response_positions(p["positions"], p["attention_mask"], steps)], 2),
      "attention_mask": np.concatenate([p["attention_mask"], response_mask], 1).astype(np.int32),
      # -1: a generated <|image_pad|> id is text (as the sampler embedded it), not an image slot.
      "image_token_index": np.concatenate([p["image_token_index"], np.full(tokens.shape, -1, np.int32)], 1),
      "response": np.asarray(tokens, np.int32),
      "response_mask": response_mask,
  }


def _pad_to(rows: dict, tokens: int, patches: int) -> dict:
  """Left-pads the prompt part to `tokens` prompt tokens and the patches to `patches` (so rows from
  rollout rounds with different buckets concatenate)."""
  steps = rows["response"].shape[1]
  extra = tokens - (rows["input_ids"].shape[1] - steps)
  more = patches - rows["pixel_values"].shape[1]
  out = dict(rows)
  if extra:
    for k in ("input_ids", "attention_mask", "image_token_index", "positions"):
      widths = [(0, 0)] * rows[k].ndim
      widths[batch_lib.row_axis(k) + 1] = (extra, 0)  # the token axis follows the rows
      out[k] = np.pad(rows[k], widths, constant_values=batch_lib.fill_value(k))
  if more:
    for k in ("pixel_values", "vision_positions", "vision_segment_ids"):
      out[k] = np.pad(rows[k], [(0, 0), (0, more)] + [(0, 0)] * (rows[k].ndim - 2))
  return out


# ----------------------------------------------------------------------------------------------
# The objective and the batch source
# ----------------------------------------------------------------------------------------------


def _check(config) -> None:
  g = config.grpo
  if int(g.num_generations) < 2:
    raise ConfigError(f"grpo.num_generations={g.num_generations}: group advantages need at least 2")
  if g.loss_aggregation not in AGGREGATIONS:
    raise ConfigError(f"grpo.loss_aggregation={g.loss_aggregation!r} is not one of {AGGREGATIONS}")
  if not 0 <= float(g.clip_low) < 1:
    raise ConfigError(f"grpo.clip_low={g.clip_low} must be in [0, 1)")
  if float(g.clip_high) < 0:
    raise ConfigError(f"grpo.clip_high={g.clip_high} must be >= 0")
  if float(g.temperature) <= 0:
    raise ConfigError(f"grpo.temperature={g.temperature}: rollouts must sample (> 0)")
  for key in ("ppo_epochs", "num_minibatches", "max_sampling_rounds", "max_new_tokens"):
    if int(g[key]) < 1:
      raise ConfigError(f"grpo.{key}={g[key]} must be >= 1")
  if not 0 <= int(g.overlong_buffer) <= int(g.max_new_tokens):
    raise ConfigError(f"grpo.overlong_buffer={g.overlong_buffer} must be in [0, grpo.max_new_tokens]")


class ClippedObjective:
  """The GRPO/DAPO objective: `policy_loss` over the response tokens of rollout rows."""

  def __init__(self, config):
    _check(config)
    g = config.grpo
    self.temperature, self.block = float(g.temperature), int(config.train.lm_head_block)
    self.clip = dict(clip_low=float(g.clip_low), clip_high=float(g.clip_high), aggregation=g.loss_aggregation,
                     kl_coef=float(g.kl_coef))
    self.batch_keys = MODEL_INPUTS + ROLLOUT_KEYS + (("ref_logp",) if float(g.kl_coef) > 0 else ())

  def response_stats(self, model, batch, entropy: bool = False) -> dict:
    """Token statistics (zwz_jax.train.lm_head.token_stats) of the response tokens under the
    sampling distribution (as the sampler's log-probs): only the positions that predict the
    response go through the LM head, blockwise."""
    hidden = model(**{k: batch[k] for k in MODEL_INPUTS}, head=False)
    steps = batch["response"].shape[1]
    return token_stats(hidden[:, -steps - 1:-1], model.logits, batch["response"], temperature=self.temperature,
                       entropy=entropy, block=self.block)

  def loss_sums(self, model, batch):
    stats = self.response_stats(model, batch, entropy=True)
    loss, denom, sums = policy_loss(stats["logp"], batch["old_logp"], batch["advantages"], batch["response_mask"],
                                    ref_logp=batch.get("ref_logp"), **self.clip)
    sums["entropy"] = jnp.sum(stats["entropy"] * batch["response_mask"].astype(jnp.float32))
    return loss, denom, sums

  def metrics(self, loss, denom, sums) -> dict:
    tokens = jnp.maximum(sums["tokens"], 1.0)
    out = {"pg_loss": loss / denom, "clip_frac": sums["clipped"] / tokens, "entropy": sums["entropy"] / tokens,
           "ratio": sums["ratio"] / tokens}
    if "kl" in sums:
      out["kl"] = sums["kl"] / tokens
    return out


class RolloutCollector:
  """The RL batch source: each step samples and rewards rollouts of the current policy
  (`collect`), computes their old (and reference) log-probs once, and hands the trainer
  ppo_epochs x num_minibatches update batches of them."""

  step_name = "RL step"
  prompts_only = True  # the pipeline yields prompts; responses are sampled
  headline = "reward_mean"
  loss_key = "pg_loss"  # the metric the run halts on when it is not finite

  def __init__(self, config, tokenizer):
    """`tokenizer` decodes responses for the judge and gives the stop id; None builds a collector
    that can only be described (what launch/compile.py needs), not run."""
    from zwz_jax.data import processor
    _check(config)  # the collector reads the same keys as the objective, whichever is built first
    self.config, self.tokenizer = config, tokenizer
    g = config.grpo
    self.updates_per_step = int(g.ppo_epochs) * int(g.num_minibatches)
    stop = (tokenizer.token_to_id(processor.IM_END),) if tokenizer is not None else ()
    self.sampling = sampler_lib.SamplingConfig(max_new_tokens=int(g.max_new_tokens), temperature=float(g.temperature),
                                               top_p=float(g.top_p), stop_ids=stop)
    self._logprobs = jax.jit(self._logprobs_fn, static_argnums=0)
    self._ref_params = None  # the frozen initial policy, loaded at the first step when kl_coef > 0

  def check(self, mesh) -> None:
    g, d = self.config.grpo, self.config.data
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    prompts, accum = int(d.global_batch_size), int(self.config.train.grad_accum_steps)
    rows = prompts * int(g.num_generations)
    if prompts % n:
      raise ShardingError(f"data.global_batch_size={prompts} prompts per RL step do not divide over the "
                          f"batch axes data x fsdp = {n} of mesh {dict(mesh.shape)}")
    if rows % int(g.num_minibatches) or (rows // int(g.num_minibatches)) % (accum * n):
      raise ShardingError(
          f"{prompts} prompts x grpo.num_generations={g.num_generations} = {rows} responses split into "
          f"grpo.num_minibatches={g.num_minibatches} mini-batches of train.grad_accum_steps={accum} "
          f"micro-batches must divide over data x fsdp = {n}")

  # -- policy forward pieces ---------------------------------------------------------------------

  def _logprobs_fn(self, trainer, params, batch):
    return trainer.objective.response_stats(trainer.model(params), batch)["logp"]

  def logprobs(self, trainer, params, local_rows: dict) -> np.ndarray:
    """Log-probs of the response tokens under `params` (process-local rows in and out)."""
    with jax.set_mesh(trainer.mesh):
      out = self._logprobs(trainer, params, trainer.device_batch(local_rows, MODEL_INPUTS + ("response",)))
    return batch_lib.local_rows(out)

  def sample(self, trainer, params, prompts: dict, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, lengths, sampler log-probs) of num_generations responses per prompt, process-local."""
    with jax.set_mesh(trainer.mesh):
      out = sampler_lib.generate(trainer.model(params), trainer.device_batch(prompts, MODEL_INPUTS), self.sampling,
                                 rng, num_samples=int(self.config.grpo.num_generations),
                                 return_logprobs=True, to_host=False)
    return tuple(batch_lib.local_rows(x) for x in out)

  def rewards(self, prompts: dict, tokens, lengths) -> tuple[np.ndarray, dict]:
    """Reward per response, and its parts (accuracy, format, stopped) for the metrics."""
    g, n = self.config.grpo, int(self.config.grpo.num_generations)
    texts = sampler_lib.decode_texts(self.tokenizer, tokens, lengths, self.sampling.stop_ids)
    acc = np.array([bool(answers.judge(t, prompts["answers"][i // n], options=prompts["options"][i // n]).correct)
                    for i, t in enumerate(texts)], np.float32)
    fmt = np.array([has_answer_tags(t) for t in texts], np.float32)
    stopped = np.isin(tokens[np.arange(len(texts)), np.maximum(lengths, 1) - 1], self.sampling.stop_ids)
    total = (float(g.reward_accuracy) * acc + float(g.reward_format) * fmt
             + overlong_penalty(lengths, int(g.max_new_tokens), int(g.overlong_buffer), float(g.overlong_penalty)))
    return total.astype(np.float32), {"accuracy": acc, "format": fmt, "stopped": stopped.astype(np.float32)}

  # -- the step's batches ------------------------------------------------------------------------

  def rollouts(self, trainer, params, data_iter, step: int) -> tuple[dict, dict]:
    """Rollout rounds until every process holds data.global_batch_size / processes groups with a
    learning signal (or max_sampling_rounds ran): process-local training rows and statistics."""
    g = self.config.grpo
    n = int(g.num_generations)
    want = int(self.config.data.global_batch_size) // jax.process_count()
    kept, dropped, shapes = [], [], []
    stats = {k: [] for k in ("reward", "accuracy", "format", "length", "stopped")}
    rounds = 0
    key = jax.random.fold_in(jax.random.key(int(self.config.seed)), step)
    while True:
      prompts = next(data_iter)
      tokens, lengths, sampler_logp = self.sample(trainer, params, prompts, jax.random.fold_in(key, rounds))
      rounds += 1
      rewards, parts = self.rewards(prompts, tokens, lengths)
      rows = rollout_sequences(prompts, tokens, lengths, n)
      rows["advantages"] = group_advantages(rewards, n, std=bool(g.advantage_std))
      rows["sampler_logp"] = sampler_logp
      for k, v in (("reward", rewards), ("length", lengths), *parts.items()):
        stats[k].append(np.asarray(v, np.float32))
      keep = informative_groups(rewards, n) if g.dynamic_sampling else np.ones(len(rewards) // n, bool)
      shapes.append((rows["input_ids"].shape[1] - tokens.shape[1], rows["pixel_values"].shape[1]))
      for i, informative in enumerate(keep):
        (kept if informative else dropped).append(batch_lib.take_rows(rows, slice(i * n, (i + 1) * n)))
      # Every process runs the same number of rounds (sampling is a collective over the mesh).
      if _min_over_processes(len(kept)) >= want or rounds >= int(g.max_sampling_rounds):
        break
    groups = kept[:want]
    pool = dropped + kept
    while len(groups) < want:  # still short: pad with masked copies (no loss, no token counts)
      pad = dict(pool[len(groups) % len(pool)])
      pad["response_mask"] = np.zeros_like(pad["response_mask"])
      groups.append(pad)
    # Rounds may have used different buckets: pad all to the largest (the same on every process).
    tokens_max, patches_max = (max(s[i] for s in shapes) for i in (0, 1))
    groups = [_pad_to(gr, tokens_max, patches_max) for gr in groups]
    out = batch_lib.concat_rows(groups)
    cat = {k: np.concatenate(v) for k, v in stats.items()}
    seen = len(cat["reward"]) // n
    info = {"reward_mean": _mean(cat["reward"]), "reward_std": float(np.std(cat["reward"])),
            "reward_accuracy": _mean(cat["accuracy"]), "reward_format": _mean(cat["format"]),
            "response_length": _mean(cat["length"]), "stopped": _mean(cat["stopped"]),
            "kept_group_share": min(len(kept), seen) / seen if g.dynamic_sampling else 1.0,
            "sampling_rounds": rounds, "padded_groups": want - min(len(kept), want),
            "sampled_tokens": float(cat["length"].sum())}
    return out, info

  def collect(self, trainer, state, data_iter, step: int) -> tuple[list[dict], dict, dict]:
    """The step's update batches: `rollouts`, their old (and reference) log-probs once, before any
    update, then ppo_epochs passes over num_minibatches mini-batches."""
    g = self.config.grpo
    t0 = time.perf_counter()
    rows, info = self.rollouts(trainer, state["params"], data_iter, step)
    t1 = time.perf_counter()
    rows["old_logp"] = self.logprobs(trainer, state["params"], rows)
    if "ref_logp" in trainer.objective.batch_keys:
      if self._ref_params is None:
        self._ref_params, _ = load_params(self.config.train.init_from, trainer.space)
      rows["ref_logp"] = self.logprobs(trainer, self._ref_params, rows)
    gap = np.abs(rows.pop("sampler_logp") - rows["old_logp"])[rows["response_mask"]]
    info.update(logp_gap_max=float(gap.max()) if gap.size else 0.0, rollout_time_s=t1 - t0,
                rollout_tokens_per_s=info["sampled_tokens"] * jax.process_count() / max(t1 - t0, 1e-9))
    minibatches = list(_minibatches(rows, int(g.num_minibatches)))
    return minibatches * int(g.ppo_epochs), info, {}


def _mean(x) -> float:
  return float(np.mean(x)) if np.size(x) else float("nan")


def _min_over_processes(value: int) -> int:
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return int(np.min(multihost_utils.process_allgather(np.int32(value))))


def _minibatches(rows: dict, num: int):
  size = batch_lib.num_rows(rows) // num
  for i in range(num):
    yield batch_lib.take_rows(rows, slice(i * size, (i + 1) * size))
