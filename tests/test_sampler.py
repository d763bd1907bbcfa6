"""KV-cache generation equals an uncached recompute; sampling (temperature, top-k, top-p, presence
penalty) equals a numpy reference; stop tokens, seeding and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from tests import hf_reference as ref
from tests.shared import CONFIGS
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.generate import sampler
from zwz_jax.models import convert
from zwz_jax.models.qwen2_5_vl import ModelConfig
from zwz_jax.sharding import make_mesh, state_shardings
from zwz_jax.data.batch import batch_spec

IM_END = 502


@pytest.fixture(scope="module")
def setup(tiny_config, tmp_path_factory):
  cfg = ModelConfig.from_config(tiny_config.model)
  hf = ref.hf_model(cfg, seed=11)
  path = tmp_path_factory.mktemp("hf")
  hf.save_pretrained(path)
  ours = convert.load_hf_state(cfg, str(path), make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  rng = np.random.default_rng(0)
  exs = [ref.example(tiny_config, ref.images(rng, [(150, 100)]), [[1, 2, 3, 4, 5], [6, 7]]),
         ref.example(tiny_config, ref.images(rng, [(64, 250)]), [[9], [10, 11, 12]])]
  batch = batching.build_batch(exs, vision_cfg=cfg.vision, image_token_id=cfg.image_token_id,
                               max_tokens=max(len(e["input_ids"]) for e in exs) + 3, max_patches=512,
                               pad_side="left")
  return cfg, hf, ours, exs, batch


# Greedy decoding against transformers' generate, for both families and every attention backend:
# tests/test_parity.py.


def test_cached_decode_equals_uncached_recompute(setup):
  cfg, _, ours, _, batch = setup
  n = 6
  tokens, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=n))
  full = {k: np.asarray(v) for k, v in batch.items()}
  b, l = full["input_ids"].shape
  full["input_ids"] = np.concatenate([full["input_ids"], tokens], axis=1)
  full["attention_mask"] = np.concatenate([full["attention_mask"], np.ones((b, n), np.int32)], axis=1)
  start = np.max(np.where(batch["attention_mask"][None] > 0, batch["positions"], -1), axis=(0, 2)) + 1
  gen_pos = np.broadcast_to((start[:, None] + np.arange(n))[None], (3, b, n))
  full["positions"] = np.concatenate([full["positions"], gen_pos], axis=2)
  full["image_token_index"] = np.concatenate([full["image_token_index"], np.full((b, n), -1, np.int32)], axis=1)
  logits = ours(**{k: jnp.asarray(full[k]) for k in batching.MODEL_INPUTS})
  # Each generated token is the argmax of the uncached forward at the position before it.
  np.testing.assert_array_equal(np.argmax(np.asarray(logits)[:, l - 1:l + n - 1], -1), tokens)


def test_stop_tokens_and_padding(setup):
  _, _, ours, _, batch = setup
  tokens, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=8))
  stop = int(tokens[0, 2])  # pretend the third token of row 0 is a stop token
  got, lengths = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=8, stop_ids=(stop,), pad_id=-7))
  assert lengths[0] == np.argmax(tokens[0] == stop) + 1
  assert (got[0, lengths[0]:] == -7).all() and (got[0, :lengths[0]] == tokens[0, :lengths[0]]).all()


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(setup):
  _, _, ours, _, batch = setup
  greedy, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=6))
  hot = sampler.SamplingConfig(max_new_tokens=6, temperature=1.0)
  a, _ = sampler.generate(ours, batch, hot, jax.random.key(1))
  b, _ = sampler.generate(ours, batch, hot, jax.random.key(1))
  c, _ = sampler.generate(ours, batch, hot, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  nucleus, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6),
                                jax.random.key(3))
  np.testing.assert_array_equal(nucleus, greedy)


def test_a_key_per_row_draws_independently_of_the_batch(setup):
  """With a key per prompt, a row's sample depends on its key alone: the same in a batch, alone,
  or in another place of the batch; with samples per prompt, each sample folds in its index."""
  cfg, _, ours, exs, batch = setup
  hot = sampler.SamplingConfig(max_new_tokens=6, temperature=1.0)
  keys = jax.random.key_data(jnp.stack([jax.random.key(5), jax.random.key(6)]))
  both, _ = sampler.generate(ours, batch, hot, keys)
  swapped = {k: np.flip(v, axis=batching.row_axis(k)) for k, v in batch.items()}
  flipped, _ = sampler.generate(ours, swapped, hot, keys[::-1])
  np.testing.assert_array_equal(flipped[::-1], both)
  alone = {k: np.take(v, [1], axis=batching.row_axis(k)) for k, v in batch.items()}
  one, _ = sampler.generate(ours, alone, hot, keys[1:])
  np.testing.assert_array_equal(one[0], both[1])
  many, _ = sampler.generate(ours, batch, hot, keys, num_samples=3)
  assert not np.array_equal(many[0], many[1])  # samples of a prompt differ


def test_sharded_generation_equals_single_device(setup):
  cfg, _, ours, _, batch = setup
  want, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=6))
  mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
  from flax import nnx
  gdef, state = nnx.split(ours)
  sharded = nnx.merge(gdef, jax.device_put(state, state_shardings(state, mesh)))
  placed = {k: jax.device_put(jnp.asarray(v), NamedSharding(mesh, batch_spec(k, np.ndim(v))))
            for k, v in batch.items() if k in batching.MODEL_INPUTS}
  with jax.set_mesh(mesh):
    got, _ = sampler.generate(sharded, placed, sampler.SamplingConfig(max_new_tokens=6))
  np.testing.assert_array_equal(got, want)


def test_an_eval_batch_is_padded_to_the_batch_axes_never_replicated(setup):
  """Two prompts on data x fsdp = 4: the evaluator's batch takes 4 rows, one per chip, the prompts'
  tokens unchanged. Replicated, every chip would decode every prompt."""
  _, _, ours, _, batch = setup
  want, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=6))
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
  assert batching.eval_rows(mesh, 2) == 4 and batching.eval_rows(mesh, 5) == 8
  assert batching.eval_rows(mesh, 2, processes=8) == 8
  with pytest.raises(ValueError, match=r"2 rows of 'input_ids' do not divide .* data x fsdp = 4.*eval_rows"):
    batching.placement(mesh, "input_ids", batch["input_ids"].shape)
  rows = {k: np.asarray(v) for k, v in batch.items() if k in batching.MODEL_INPUTS}
  padded = batching.concat_rows([rows, batching.take_rows(rows, [-1, -1])])  # the last prompt again, as the evaluator pads
  from flax import nnx
  gdef, state = nnx.split(ours)
  sharded = nnx.merge(gdef, jax.device_put(state, state_shardings(state, mesh)))
  with jax.set_mesh(mesh):
    placed = batching.place(mesh, padded, batching.MODEL_INPUTS)
    assert {s.data.shape[0] for s in placed["pixel_values"].addressable_shards} == {1}
    got, _ = sampler.generate(sharded, placed, sampler.SamplingConfig(max_new_tokens=6))
  np.testing.assert_array_equal(got[:2], want)


# ---- the sampling distribution against a numpy reference -----------------------------------------


def _reference_probs(logits, generated, cfg):
  """vLLM's order in float64: presence penalty, temperature, top-k (ties kept), top-p."""
  x = logits.astype(np.float64) - cfg.presence_penalty * generated
  x = x / cfg.temperature
  if 0 < cfg.top_k < x.shape[-1]:
    kth = np.sort(x, axis=-1)[:, -cfg.top_k][:, None]
    x = np.where(x < kth, -np.inf, x)
  if cfg.top_p < 1.0:
    for row in x:
      ordered = np.sort(row)[::-1]
      p = np.exp(ordered - ordered[0])
      cum = np.cumsum(p / p.sum())
      row[row < ordered[np.sum(cum < cfg.top_p)]] = -np.inf
  p = np.exp(x - x.max(axis=-1, keepdims=True))
  return p / p.sum(axis=-1, keepdims=True)


def _fixed_logits():
  rng = np.random.default_rng(7)
  logits = (rng.normal(size=(4, 40)) * 2.0).astype(np.float32)
  logits[3, :6] = logits[3].max() + 1.0  # six tied best tokens: top-k keeps every tie
  generated = rng.random((4, 40)) < 0.3
  generated[3, :6] = False  # (a penalty would break the tie)
  return logits, generated


QWEN = dict(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5)  # Qwen's recommended settings
CASES = [QWEN, dict(temperature=1.0, top_k=5), dict(temperature=0.5, top_p=0.6),
         dict(temperature=1.0, presence_penalty=2.0), dict(temperature=1.3, top_k=3, top_p=0.9, presence_penalty=0.5)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sampling_distribution_equals_the_numpy_reference(kw):
  logits, generated = _fixed_logits()
  cfg = sampler.SamplingConfig(**kw)
  want = _reference_probs(logits, generated, cfg)
  got = jax.nn.softmax(sampler.sampling_logits(jnp.asarray(logits), cfg, jnp.asarray(generated)), axis=-1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  if cfg.top_k and cfg.top_p == 1.0:
    assert ((want > 0).sum(axis=-1)[:3] == cfg.top_k).all()
  if cfg.top_k:
    assert (want[3, :6] > 0).all()  # six tied best tokens: all survive top-k, whatever k
  # The draws follow it: 40,000 samples per row, frequencies within 0.012 (about 5 standard errors).
  n = 40_000
  keys = jax.random.split(jax.random.key(0), n)
  draws = jax.jit(jax.vmap(lambda k: sampler._sample(jnp.asarray(logits), k, cfg, jnp.asarray(generated))))(keys)
  freq = np.stack([np.bincount(np.asarray(draws)[:, r], minlength=40) / n for r in range(4)])
  assert np.abs(freq - want).max() < 0.012
  assert (freq[want == 0] == 0).all()  # filtered tokens are never drawn


def test_greedy_takes_the_penalised_argmax():
  logits, generated = _fixed_logits()
  cfg = sampler.SamplingConfig(presence_penalty=3.0)
  got = sampler._sample(jnp.asarray(logits), jax.random.key(0), cfg, jnp.asarray(generated))
  np.testing.assert_array_equal(np.asarray(got), np.argmax(logits - 3.0 * generated, axis=-1))
  plain = sampler._sample(jnp.asarray(logits), jax.random.key(0), sampler.SamplingConfig(), None)
  np.testing.assert_array_equal(np.asarray(plain), np.argmax(logits, axis=-1))


def test_presence_penalty_in_decoding(setup):
  """A large penalty forbids every token a row has generated; top_k=1 sampling is greedy."""
  _, _, ours, _, batch = setup
  n = 12
  greedy, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=n))
  assert any(len(set(row.tolist())) < n for row in greedy)  # the tiny random student repeats itself
  fresh, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=n, presence_penalty=1e4))
  assert all(len(set(row.tolist())) == n for row in fresh)
  np.testing.assert_array_equal(fresh[:, 0], greedy[:, 0])  # nothing generated yet, nothing penalised
  top1, _ = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=n, temperature=1.0, top_k=1),
                             jax.random.key(5))
  np.testing.assert_array_equal(top1, greedy)



def test_prefill_takes_the_lm_head_at_the_last_position_only():
  """The prefill's logits are needed at each prompt's last position only: a (B, L, vocab) array there
  is 5 GB in bfloat16 per 16K-token prompt at Qwen's vocabulary. Compiled, the sampler holds far less."""
  from flax import nnx
  from zwz_jax import aot
  from zwz_jax.models.qwen2_5_vl import Qwen2_5_VL
  vocab, b, l, p = 32768, 2, 1024, 64
  config = load_config(f"{CONFIGS}/tiny.py", [f"model.text.vocab_size={vocab}"])
  cfg = ModelConfig.from_config(config.model)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))))
  shapes = aot.batch_shapes(config, b, l, p)
  batch = {k: shapes[k] for k in batching.MODEL_INPUTS}
  compiled = sampler._generate.lower(graphdef, state, batch, jax.ShapeDtypeStruct((2,), jnp.uint32),
                                     sampler.SamplingConfig(max_new_tokens=2)).compile()
  full_logits = b * l * vocab * 4
  assert compiled.memory_analysis().temp_size_in_bytes < full_logits / 8


@pytest.mark.parametrize("new_tokens", [1, 4])
def test_the_last_token_takes_no_decode_step(new_tokens):
  """n new tokens need the prefill and n - 1 decode steps: the model call after the last token would
  only compute a token nobody reads (for a one-token answer, a decode step on top of the prefill)."""
  from flax import nnx
  from zwz_jax import aot
  from zwz_jax.models.qwen2_5_vl import Qwen2_5_VL
  config = load_config(f"{CONFIGS}/tiny.py")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2_5_VL(ModelConfig.from_config(config.model),
                                                                rngs=nnx.Rngs(0))))
  shapes = aot.batch_shapes(config, 2, 64, 64)
  batch = {k: shapes[k] for k in batching.MODEL_INPUTS}
  cfg = sampler.SamplingConfig(max_new_tokens=new_tokens)
  jaxpr = jax.make_jaxpr(lambda s, b: sampler._generate.__wrapped__(graphdef, s, b, jax.random.key(0), cfg))(
      state, batch)
  scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
  assert [e.params["length"] for e in scans] == [new_tokens - 1]
