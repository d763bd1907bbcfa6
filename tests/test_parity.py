"""The Flax student equals `transformers`, for every family and every attention backend that runs on
CPU: vision tower (and Qwen3-VL's DeepStack features), every decoder layer, logits, greedy decoding,
and conversion to HF safetensors and back. Family-only checks are in test_qwen2_5_vl.py and
test_qwen3_vl.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests import hf_reference as ref
from tests.shared import CONFIGS
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.eval import zoombench
from zwz_jax.generate import sampler
from zwz_jax.models import convert, registry
from zwz_jax.sharding import make_mesh

TOL = 1e-4  # fp32, matmul precision "highest"
FAMILY_CONFIGS = {"qwen2_5_vl": "tiny.py", "qwen3_vl": "tiny_qwen3.py"}


@pytest.fixture(scope="module", params=list(FAMILY_CONFIGS))
def family_config(request):
  """The family the shared parity fixtures (conftest: hf_checkpoint, models, auto_models) build."""
  return load_config(f"{CONFIGS}/{FAMILY_CONFIGS[request.param]}")


def test_two_images_of_different_sizes(models, family_config):
  ours, hf = models
  rng = np.random.default_rng(0)
  imgs = ref.images(rng, [(150, 100), (64, 250)])  # sides that are not multiples of a merged patch
  ex = ref.example(family_config, imgs, [[1, 2, 3], [40, 41, 42, 43], [7, 8]])
  v = ours.cfg.vision
  batch = batching.build_batch([ex], vision_cfg=v, image_token_id=ours.cfg.image_token_id,
                               max_tokens=len(ex["input_ids"]) + 5, max_patches=1024)
  logits, aux = ref.forward(ours, batch)
  hf_logits, hf_layers, hf_feats, hf_deepstack = ref.hf_forward(hf, ex)
  n = len(ex["input_ids"])

  lay = batching.layout_vision(ex["pixel_values"], ex["grid_thw"], v)
  vision = np.asarray(aux["vision"])[0, lay["token_index"]]
  assert vision.shape == hf_feats.shape
  assert ref.rel_err(vision, hf_feats) <= TOL
  if registry.name_of(ours.cfg) == "qwen3_vl":
    # No windows: the batch keeps the processor's patch order. The DeepStack features reach the
    # first decoder layers: checked through the layers below, and at the tower's output here.
    np.testing.assert_array_equal(lay["token_index"], np.arange(len(hf_feats)))
    _, ds = jax.jit(lambda m, b: m.visual(b["pixel_values"], b["vision_positions"], b["vision_segment_ids"]))(
        ours, {k: jnp.asarray(batch[k]) for k in batching.MODEL_INPUTS})
    assert len(ds) == len(hf_deepstack) == len(v.deepstack_visual_indexes)
    for j, (a, b) in enumerate(zip(ds, hf_deepstack)):
      assert ref.rel_err(np.asarray(a)[0, lay["token_index"]], b) <= TOL, f"deepstack {j}"
  assert len(hf_layers) == ours.cfg.text.num_layers
  for i, hf_out in enumerate(hf_layers):
    assert ref.rel_err(np.asarray(aux["layers"][i + 1])[0, :n], hf_out[0]) <= TOL, f"decoder layer {i}"
  assert ref.rel_err(np.asarray(logits)[0, :n], hf_logits[0]) <= TOL


def test_padded_batch(models, family_config):
  """A right-padded batch of two examples (one and two images) matches HF example by example."""
  ours, hf = models
  rng = np.random.default_rng(1)
  ex_a = ref.example(family_config, ref.images(rng, [(90, 90)]), [[5, 6], [9, 10, 11]])
  ex_b = ref.example(family_config, ref.images(rng, [(120, 60), (60, 120)]), [[3], [4, 4], [2]])
  batch = batching.build_batch([ex_a, ex_b], vision_cfg=ours.cfg.vision,
                               image_token_id=ours.cfg.image_token_id, max_tokens=96, max_patches=512)
  logits, _ = ref.forward(ours, batch)
  for i, ex in enumerate((ex_a, ex_b)):
    hf_logits = ref.hf_forward(hf, ex)[0]
    n = len(ex["input_ids"])
    assert ref.rel_err(np.asarray(logits)[i, :n], hf_logits[0]) <= TOL, f"example {i}"


def test_coverage_layer_attention_equals_transformers_eager(models, family_config):
  """The attention probabilities coverage reads (one decoder layer, one query per row) equal that row
  of transformers' eager attention, example by example; padding keys get none."""
  ours, hf = models
  rng = np.random.default_rng(2)
  exs = [ref.example(family_config, ref.images(rng, [(90, 90)]), [[5, 6], [9, 10, 11]]),
         ref.example(family_config, ref.images(rng, [(120, 60), (60, 120)]), [[3], [4, 4], [2]])]
  batch = batching.build_batch(exs, vision_cfg=ours.cfg.vision, image_token_id=ours.cfg.image_token_id,
                               max_tokens=96, max_patches=512)
  inputs = {k: jnp.asarray(batch[k]) for k in batching.MODEL_INPUTS}
  lengths = [len(ex["input_ids"]) for ex in exs]
  layer = 1
  implementation = hf.config._attn_implementation
  hf.set_attn_implementation("eager")
  try:
    hf_rows = []
    for ex in exs:
      ids = torch.as_tensor(ex["input_ids"]).long()[None]
      with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=torch.as_tensor(ex["pixel_values"]),
                 image_grid_thw=torch.as_tensor(ex["grid_thw"]), mm_token_type_ids=(ids == hf.config.image_token_id).int(),
                 output_attentions=True)
      hf_rows.append(out.attentions[layer][0].numpy())  # (heads, T, T)
  finally:
    hf.set_attn_implementation(implementation)
  coverage = zoombench.coverage_forward(layer)  # the evaluator's
  for query in ([n - 1 for n in lengths], [n // 2 for n in lengths]):
    probs = np.asarray(coverage(ours, inputs, jnp.asarray(query, jnp.int32)))
    assert probs.shape == (2, ours.cfg.text.num_heads, 96)
    for i, (n, q) in enumerate(zip(lengths, query)):
      assert ref.rel_err(probs[i, :, :n], hf_rows[i][:, q]) <= TOL, (i, q)
      assert not probs[i, :, n:].any()


def test_text_only(models):
  ours, hf = models
  ids = np.arange(1, 21, dtype=np.int32)[None]
  pos = np.broadcast_to(np.arange(20, dtype=np.int32), (3, 1, 20))
  logits = jax.jit(lambda m, i, p: m(i, p))(ours, jnp.asarray(ids), jnp.asarray(pos))
  with torch.no_grad():
    hf_logits = hf(input_ids=torch.as_tensor(ids).long()).logits.numpy()
  assert ref.rel_err(logits, hf_logits) <= TOL


def test_greedy_generation_equals_transformers_generate(models, family_config):
  """KV-cache decoding of a left-padded batch: positions continue past the images (and DeepStack
  features enter at prefill only)."""
  ours, hf = models
  rng = np.random.default_rng(4)
  exs = [ref.example(family_config, ref.images(rng, [(150, 100)]), [[1, 2, 3, 4, 5], [6, 7]]),
         ref.example(family_config, ref.images(rng, [(64, 250)]), [[9], [10, 11, 12]])]
  batch = batching.build_batch(exs, vision_cfg=ours.cfg.vision, image_token_id=ours.cfg.image_token_id,
                               max_tokens=max(len(e["input_ids"]) for e in exs) + 3, max_patches=512,
                               pad_side="left")
  tokens, lengths = sampler.generate(ours, batch, sampler.SamplingConfig(max_new_tokens=12))
  ids = torch.as_tensor(batch["input_ids"]).long()
  with torch.no_grad():
    want = hf.generate(
        input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
        pixel_values=torch.as_tensor(np.concatenate([e["pixel_values"] for e in exs])),
        image_grid_thw=torch.as_tensor(np.concatenate([e["grid_thw"] for e in exs])),
        mm_token_type_ids=(ids == hf.config.image_token_id).int(), do_sample=False,
        max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
  np.testing.assert_array_equal(tokens, want[:, ids.shape[1]:].numpy())
  assert (lengths == 12).all()  # no stop ids: every row runs to the end


def test_round_trip_through_hf_safetensors(auto_models, tmp_path):
  """HF -> ours -> HF safetensors (published tensor names, several shards) -> transformers reloads it
  unchanged, our reader takes it back bit for bit, and its config.json describes our config."""
  ours, hf = auto_models
  convert.save_hf(ours, str(tmp_path), max_shard_bytes=64 * 1024)  # force several shards + an index
  assert (tmp_path / "model.safetensors.index.json").exists()
  reloaded = type(hf).from_pretrained(tmp_path).eval()
  for (n1, p1), (n2, p2) in zip(hf.state_dict().items(), reloaded.state_dict().items()):
    assert n1 == n2 and torch.equal(p1, p2), n1
  ids = torch.arange(1, 30)[None]
  with torch.no_grad():
    assert torch.equal(hf(input_ids=ids).logits, reloaded(input_ids=ids).logits)
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  again = convert.load_hf_state(ours.cfg, str(tmp_path), mesh)
  for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  got = convert.model_config_from_hf(str(tmp_path))
  got.dtype = got.param_dtype = "float32"
  got.scan_layers = ours.cfg.scan_layers  # how to run it, not in an HF config
  assert registry.model_config(got) == ours.cfg
