"""Sharded forward == single-device forward; the 7B student shards completely; clear mesh errors."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tests.shared import CONFIGS
from tests import hf_reference as ref
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL
from zwz_jax.sharding import (ShardingError, abstract_model, create_sharded_model, make_mesh,
                              replicated_fraction, state_shardings)


def _batch(tiny_config, n=4):
  rng = np.random.default_rng(3)
  sizes = [(150, 100), (64, 250), (90, 90), (200, 60)]
  exs = [ref.example(tiny_config, ref.images(rng, [sizes[i % 4]]), [[1, 2, 3], [4 + i, 5]]) for i in range(n)]
  cfg = tiny_config.model
  return batching.build_batch(exs, vision_cfg=ModelConfig.from_config(cfg).vision,
                              image_token_id=cfg.image_token_id, max_tokens=64, max_patches=512)


def _forward(model, batch, mesh=None):
  return np.asarray(ref.forward(model, batch, mesh)[0])


def test_sharded_forward_matches_single_device(tiny_config):
  cfg = ModelConfig.from_config(tiny_config.model)
  single = Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))
  batch = _batch(tiny_config)
  expected = _forward(single, batch)

  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  gdef, state = nnx.split(single)
  sharded_state = jax.device_put(state, state_shardings(state, mesh))
  sharded = nnx.merge(gdef, sharded_state)
  # Every matrix really is split across devices.
  q = sharded.layers[0].attn.q_kernel[...]
  assert q.sharding.spec == PartitionSpec("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (cfg.text.hidden_size // 4, cfg.text.num_heads // 2, cfg.text.head_dim)
  got, inter = ref.forward(sharded, batch, mesh)
  # Same math, different reduction order across shards: fp32 round-off only.
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  # Sequence parallelism: between layers (what full remat keeps for the backward) each tensor rank
  # holds its share of the positions, not a copy of them all.
  for h in inter["layers"]:
    assert h.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "fsdp"), "tensor", None)), 3)
    assert h.addressable_shards[0].data.shape == (1, 64 // 2, cfg.text.hidden_size)


def test_create_sharded_model_places_params(tiny_config):
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cfg = ModelConfig.from_config(tiny_config.model)
  model = create_sharded_model(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), mesh)
  emb = model.embed[...]
  assert emb.sharding.spec == PartitionSpec("tensor", "fsdp")
  # The same seed gives the same weights whatever the mesh.
  one = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  reference = create_sharded_model(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), one)
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(reference))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _hf_parameter_count(cfg):
  """Parameters of the `transformers` model with the same config, built without memory (meta device)."""
  import torch
  import transformers
  from zwz_jax.models import convert
  with torch.device("meta"):
    hf = transformers.Qwen2_5_VLForConditionalGeneration(
        transformers.Qwen2_5_VLConfig(**convert.hf_config_dict(cfg)))
  return sum(p.numel() for p in hf.parameters())


def test_student_7b_parameter_count_and_sharding():
  config = load_config(f"{CONFIGS}/student_7b.py")
  cfg = ModelConfig.from_config(config.model)
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  _, abs_state = abstract_model(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), mesh)
  leaves = jax.tree.leaves(abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  total = sum(int(np.prod(v.get_value().shape)) for v in leaves)
  assert round(total / 1e9, 2) == 8.29, total  # the published size of Qwen2.5-VL-7B
  assert total == _hf_parameter_count(cfg)
  assert replicated_fraction(abs_state) <= 0.02


def test_mesh_that_does_not_divide_the_model_names_the_parameter():
  config = load_config(f"{CONFIGS}/student_7b.py")
  cfg = ModelConfig.from_config(config.model)
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 8})  # 4 KV heads cannot split 8 ways
  with pytest.raises(ShardingError, match=r"layers\.0\.attn\.k_\w+: .*'kv_heads', size 4\) is not divisible by mesh axes tensor = 8"):
    abstract_model(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), mesh)


def test_mesh_size_errors():
  with pytest.raises(ShardingError, match="needs 16 devices, have 8"):
    make_mesh({"data": 2, "fsdp": 4, "tensor": 2})
  with pytest.raises(ShardingError, match="at most one axis may be -1"):
    make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
