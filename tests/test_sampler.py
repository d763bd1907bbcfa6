"""KV-cache generation equals transformers' generate and an uncached recompute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from tests import hf_reference as ref
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
