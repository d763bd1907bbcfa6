"""Qwen2.5-VL only: bf16 compute against fp32, tied word embeddings (the 3B). The parity with
`transformers` both families share is tests/test_parity.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.shared import CONFIGS
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
  config = load_config(f"{CONFIGS}/tiny.py", ["model.text.tie_word_embeddings=True"])
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
