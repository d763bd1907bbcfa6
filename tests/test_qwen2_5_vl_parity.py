"""The Flax student equals `transformers`' Qwen2.5-VL: vision tower, every decoder layer, logits."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import hf_reference as ref
from zwz_jax.data import batch as batching
from zwz_jax.models import convert
from zwz_jax.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL
from zwz_jax.sharding import make_mesh

TOL = 1e-4  # fp32, matmul precision "highest"


@pytest.fixture(scope="module")
def family_config(tiny_config):
  """The family the shared parity fixtures (conftest: hf_checkpoint, models, auto_models) build."""
  return tiny_config


def test_two_images_of_different_sizes(models, tiny_config):
  ours, hf = models
  rng = np.random.default_rng(0)
  imgs = ref.images(rng, [(150, 100), (64, 250)])  # non-multiples of 28, wide and tall
  ex = ref.example(tiny_config, imgs, [[1, 2, 3], [40, 41, 42, 43], [7, 8]])
  v = ours.cfg.vision
  batch = batching.build_batch([ex], vision_cfg=v, image_token_id=ours.cfg.image_token_id,
                               max_tokens=len(ex["input_ids"]) + 5, max_patches=1024)
  logits, aux = ref.forward(ours, batch)
  hf_logits, hf_layers, hf_feats, _ = ref.hf_forward(hf, ex)
  n = len(ex["input_ids"])

  lay = batching.layout_vision(ex["pixel_values"], ex["grid_thw"], v)
  vision = np.asarray(aux["vision"])[0, lay["token_index"]]
  assert vision.shape == hf_feats.shape
  assert ref.rel_err(vision, hf_feats) <= TOL
  assert len(hf_layers) == ours.cfg.text.num_layers
  for i, hf_out in enumerate(hf_layers):
    assert ref.rel_err(np.asarray(aux["layers"][i + 1])[0, :n], hf_out[0]) <= TOL, f"decoder layer {i}"
  assert ref.rel_err(np.asarray(logits)[0, :n], hf_logits[0]) <= TOL


def test_padded_batch(models, tiny_config):
  """A right-padded batch of two examples (one and two images) matches HF example by example."""
  ours, hf = models
  rng = np.random.default_rng(1)
  ex_a = ref.example(tiny_config, ref.images(rng, [(90, 90)]), [[5, 6], [9, 10, 11]])
  ex_b = ref.example(tiny_config, ref.images(rng, [(120, 60), (60, 120)]), [[3], [4, 4], [2]])
  batch = batching.build_batch([ex_a, ex_b], vision_cfg=ours.cfg.vision,
                               image_token_id=ours.cfg.image_token_id, max_tokens=96, max_patches=512)
  logits, _ = ref.forward(ours, batch)
  for i, ex in enumerate((ex_a, ex_b)):
    hf_logits = ref.hf_forward(hf, ex)[0]
    n = len(ex["input_ids"])
    assert ref.rel_err(np.asarray(logits)[i, :n], hf_logits[0]) <= TOL, f"example {i}"


def test_text_only(models):
  ours, hf = models
  ids = np.arange(1, 21, dtype=np.int32)[None]
  pos = np.broadcast_to(np.arange(20, dtype=np.int32), (3, 1, 20))
  logits = jax.jit(lambda m, i, p: m(i, p))(ours, jnp.asarray(ids), jnp.asarray(pos))
  with torch.no_grad():
    hf_logits = hf(input_ids=torch.as_tensor(ids).long()).logits.numpy()
  assert ref.rel_err(logits, hf_logits) <= TOL


def test_round_trip_through_hf_safetensors(auto_models, tmp_path):
  """HF -> ours -> HF safetensors -> transformers reloads it and its logits are unchanged."""
  import transformers
  ours, hf = auto_models
  convert.save_hf(ours, str(tmp_path), max_shard_bytes=64 * 1024)  # force several shards + an index
  assert (tmp_path / "model.safetensors.index.json").exists()
  reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
  ids = torch.arange(1, 30)[None]
  with torch.no_grad():
    a, b = hf(input_ids=ids).logits, reloaded(input_ids=ids).logits
  assert torch.equal(a, b)
  for (n1, p1), (n2, p2) in zip(hf.state_dict().items(), reloaded.state_dict().items()):
    assert n1 == n2 and torch.equal(p1, p2), n1


def test_bfloat16_compute_stays_close_to_float32(auto_models, tiny_config):
  """Mixed precision (fp32 master weights, bf16 compute) as the real configs run it."""
  from flax import nnx
  ours, _ = auto_models
  bf16 = nnx.eval_shape(lambda: Qwen2_5_VL(dataclasses.replace(ours.cfg, dtype=jnp.bfloat16), rngs=nnx.Rngs(0)))
  nnx.update(bf16, nnx.state(ours))  # same fp32 weights
  rng = np.random.default_rng(2)
  ex = ref.example(tiny_config, ref.images(rng, [(150, 100)]), [[1, 2, 3], [7, 8]])
  batch = batching.build_batch([ex], vision_cfg=ours.cfg.vision, image_token_id=ours.cfg.image_token_id,
                               max_tokens=64, max_patches=256)
  want, _ = ref.forward(ours, batch)
  got, _ = ref.forward(bf16, batch)
  assert got.dtype == jnp.bfloat16
  n = len(ex["input_ids"])
  assert ref.rel_err(np.asarray(got, np.float32)[0, :n], np.asarray(want)[0, :n]) < 3e-2


def test_tied_word_embeddings(tiny_config, tmp_path):
  """The 3B student ties its LM head to the embedding; the checkpoint then has no lm_head."""
  from zwz_jax.config import load_config
  config = load_config("configs/tiny.py", ["model.text.tie_word_embeddings=True"])
  cfg = ModelConfig.from_config(config.model)
  hf = ref.hf_model(cfg, seed=4)
  hf.save_pretrained(tmp_path)
  ours = convert.load_hf_state(cfg, str(tmp_path), make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  assert not hasattr(ours, "lm_head")
  ex = ref.example(config, ref.images(np.random.default_rng(5), [(100, 80)]), [[1, 2], [3]])
  batch = batching.build_batch([ex], vision_cfg=cfg.vision, image_token_id=cfg.image_token_id,
                               max_tokens=64, max_patches=256)
  logits, _ = ref.forward(ours, batch)
  hf_logits = ref.hf_forward(hf, ex)[0]
  n = len(ex["input_ids"])
  assert ref.rel_err(np.asarray(logits)[0, :n], hf_logits[0]) <= TOL
