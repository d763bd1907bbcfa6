"""Scan over layers (`model.scan_layers`) computes what the unrolled loop computes, in a program
whose size does not grow with depth, over the same parameters."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import hf_reference as ref
from zwz_jax import config as config_lib
from zwz_jax.data import batch as batching
from zwz_jax.generate import sampler
from zwz_jax.models import registry
from zwz_jax.models.scan import runs
from tests.shared import CONFIGS

TOL = 1e-5  # fp32, matmul precision "highest": scan and loop differ only in fusion order


def _config(name: str):
  return config_lib.load_config(f"{CONFIGS}/{name}")


def _pair(config, **changes):
  """(unrolled, scanned) students with the same parameters."""
  cfg = dataclasses.replace(registry.model_config(config.model), **changes)
  unrolled = registry.build(dataclasses.replace(cfg, scan_layers=False))
  scanned = registry.build(dataclasses.replace(cfg, scan_layers=True))
  nnx.update(scanned, nnx.state(unrolled))
  return unrolled, scanned


def _batch(config, model, pad_side="right"):
  rng = np.random.default_rng(0)
  exs = [ref.example(config, ref.images(rng, [(150, 100), (64, 120)]), [[1, 2, 3], [40, 41], [7, 8]]),
         ref.example(config, ref.images(rng, [(90, 90)]), [[5, 6], [9, 10, 11]])]
  return batching.build_batch(exs, vision_cfg=model.cfg.vision, image_token_id=model.cfg.image_token_id,
                              max_tokens=max(len(e["input_ids"]) for e in exs) + 4, max_patches=1024,
                              pad_side=pad_side)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


@pytest.fixture(scope="module", params=["tiny.py", "tiny_qwen3.py"])
def family(request):
  return _config(request.param)


# Rematerialisation changes how the scan's backward is built: the tiny default (none) on one
# family, the student configs' (full) on the other.
@pytest.mark.parametrize("name,remat", [("tiny.py", "none"), ("tiny_qwen3.py", "full")])
def test_scanned_equals_unrolled_outputs_and_gradients(name, remat):
  family = _config(name)
  unrolled, scanned = _pair(family, remat=remat)
  batch = {k: jnp.asarray(v) for k, v in _batch(family, unrolled).items() if k in batching.MODEL_INPUTS}

  @jax.jit
  def run(model):
    def loss(model):
      logits, aux = model(**batch, return_hidden=True)
      return jnp.mean(jnp.square(logits)), (logits, aux["layers"], aux["vision"])
    return nnx.value_and_grad(loss, has_aux=True)(model)

  (loss0, (logits0, layers0, vision0)), grads0 = run(unrolled)
  (loss1, (logits1, layers1, vision1)), grads1 = run(scanned)
  assert _rel(logits1, logits0) <= TOL
  assert _rel(vision1, vision0) <= TOL
  assert len(layers1) == len(layers0) == family.model.text.num_layers + 1
  for i, (a, b) in enumerate(zip(layers1, layers0)):
    assert _rel(a, b) <= TOL, f"decoder layer {i}"
  flat0, flat1 = nnx.to_flat_state(grads0), nnx.to_flat_state(grads1)
  assert [p for p, _ in flat0] == [p for p, _ in flat1]
  for (path, g0), (_, g1) in zip(flat0, flat1):
    assert _rel(g1.get_value(), g0.get_value()) <= TOL, path
  assert float(loss1) == pytest.approx(float(loss0), rel=TOL)


def test_cached_generation_and_coverage_layer(family):
  """Prefill + decode through the stacked KV cache, and one layer's attention probabilities."""
  unrolled, scanned = _pair(family)
  batch = _batch(family, unrolled, pad_side="left")
  cfg = sampler.SamplingConfig(max_new_tokens=6)
  tokens0, _ = sampler.generate(unrolled, batch, cfg)
  tokens1, _ = sampler.generate(scanned, batch, cfg)
  np.testing.assert_array_equal(tokens1, tokens0)
  inputs = {k: jnp.asarray(v) for k, v in batch.items() if k in batching.MODEL_INPUTS}
  query = jnp.full((2,), batch["input_ids"].shape[1] - 1)
  outs = [jax.jit(lambda m: m(**inputs, attention_layer=1, attention_query=query))(m) for m in (unrolled, scanned)]
  assert _rel(outs[1][0], outs[0][0]) <= TOL
  assert _rel(outs[1][1]["attention"], outs[0][1]["attention"]) <= TOL


def test_program_size_does_not_grow_with_depth():
  """Lowered StableHLO of the forward at 2 and 8 decoder layers: scanned grows only by the extra
  parameter arguments; unrolled grows with the layers' bodies."""
  config = _config("tiny.py")
  ids = jnp.arange(1, 17, dtype=jnp.int32)[None]
  pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (3, 1, 16))
  size = {}
  for scan in (False, True):
    for n in (2, 8):
      cfg = registry.model_config(config.model)
      cfg = dataclasses.replace(cfg, scan_layers=scan, text=dataclasses.replace(cfg.text, num_layers=n))
      graphdef, state = nnx.split(nnx.eval_shape(lambda cfg=cfg: registry.build(cfg)))
      text = jax.jit(lambda s, g=graphdef: nnx.merge(g, s)(ids, pos)).lower(state).as_text()
      size[scan, n] = len(text)
  assert size[True, 8] / size[True, 2] < 1.5, size
  assert size[False, 8] / size[False, 2] > 2.5, size


def test_checkpoint_layout_unchanged():
  """The same parameter paths and shapes with and without the scan: checkpoints and HF conversion
  do not know about it."""
  config = _config("tiny_qwen3.py")
  unrolled, scanned = _pair(config)
  shapes = lambda m: [(p, v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(m))]
  assert shapes(unrolled) == shapes(scanned)


def test_runs():
  assert runs(8, [3]) == [(0, 3), (3, 8)]
  assert runs(8, [0, 8, 9]) == [(0, 8)]
  assert runs(32, [7, 8, 15, 16]) == [(0, 7), (7, 8), (8, 15), (15, 16), (16, 32)]
