"""Qwen3-VL only: the learned position grid, published configs and sizes, sharding, its processor
and chat template, the launchers on it. The parity with `transformers` both families share is
tests/test_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec

from tests.shared import CONFIGS, LAUNCH
from tests import hf_reference as ref
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.models import convert, qwen3_vl, registry
from zwz_jax.sharding import abstract_model, make_mesh, replicated_fraction, state_shardings

TOL = 1e-4  # fp32, matmul precision "highest"


@pytest.fixture(scope="module")
def config():
  return load_config(f"{CONFIGS}/tiny_qwen3.py")


@pytest.fixture(scope="module")
def family_config(config):
  """The family the shared parity fixtures (conftest: hf_checkpoint, models, auto_models) build."""
  return config


def test_position_table_resampling_matches_hf():
  """Bilinear taps into the learned grid for grids smaller, equal and larger than it, and 1 wide."""
  from transformers import vision_utils
  side = 8
  grids = [(1, 4, 6), (1, 8, 8), (1, 20, 2), (1, 2, 12)]
  for grid in grids:
    g = torch.tensor([grid])
    want_i, want_w = vision_utils.get_vision_interpolation_indices_and_weights(
        g, num_grid_per_side=side, mode="bilinear", align_corners=True, spatial_merge_size=2)
    pos = vision_utils.get_vision_position_ids(g, 2).numpy()
    seg = np.ones(len(pos), np.int32)
    got_i, got_w = qwen3_vl.position_interpolation(jnp.asarray(pos[None]), jnp.asarray(seg[None]), side)
    np.testing.assert_array_equal(np.asarray(got_i)[0], want_i.numpy(), err_msg=str(grid))
    np.testing.assert_allclose(np.asarray(got_w)[0], want_w.numpy(), rtol=0, atol=1e-7, err_msg=str(grid))


def test_model_config_from_published_config_json(tmp_path):
  """Qwen3-VL-8B-Instruct's config.json (as published: rope_scaling, rope_theta in text_config,
  tie_word_embeddings only at the top level) maps onto configs/student_qwen3_8b.py."""
  import json
  published = {
      "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
      "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
      "vision_end_token_id": 151653, "tie_word_embeddings": False, "transformers_version": "4.57.0.dev0",
      "text_config": {
          "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
          "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
          "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 262144,
          "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36,
          "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
          "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
          "rope_theta": 5000000, "use_cache": True, "vocab_size": 151936},
      "vision_config": {
          "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh",
          "hidden_size": 1152, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4304,
          "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 4096,
          "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2},
  }
  (tmp_path / "config.json").write_text(json.dumps(published))
  got = convert.model_config_from_hf(str(tmp_path))
  got.dtype = got.param_dtype = "float32"
  got = registry.model_config(got)
  want = registry.model_config(load_config(f"{CONFIGS}/student_qwen3_8b.py").model)
  assert got.vision == want.vision and got.text == want.text and got.image_token_id == want.image_token_id


def test_sharded_forward_matches_single_device(auto_models, config):
  ours, _ = auto_models
  rng = np.random.default_rng(3)
  sizes = [(150, 100), (64, 250), (90, 90), (200, 60)]
  exs = [ref.example(config, ref.images(rng, [s]), [[1, 2, 3], [4 + i, 5]]) for i, s in enumerate(sizes)]
  batch = batching.build_batch(exs, vision_cfg=ours.cfg.vision, image_token_id=ours.cfg.image_token_id,
                               max_tokens=64, max_patches=256)
  expected, _ = ref.forward(ours, batch)
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  gdef, state = nnx.split(ours)
  sharded = nnx.merge(gdef, jax.device_put(state, state_shardings(state, mesh)))
  q = sharded.layers[0].attn.q_kernel[...]
  assert q.sharding.spec == PartitionSpec("fsdp", "tensor", None)
  got, _ = ref.forward(sharded, batch, mesh)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5,
                             atol=1e-5 * np.abs(np.asarray(expected)).max())


def _hf_parameter_count(cfg):
  with torch.device("meta"):
    hf = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**convert.hf_config_dict(cfg)))
  return sum(p.numel() for p in hf.parameters())


# The Hugging Face Hub's safetensors parameter totals of Qwen3-VL-{2B,4B,8B}-Instruct.
@pytest.mark.parametrize("size,published", [("2b", 2_127_532_032), ("4b", 4_437_815_808), ("8b", 8_767_123_696)])
def test_published_parameter_counts(size, published):
  cfg = registry.model_config(load_config(f"{CONFIGS}/student_qwen3_{size}.py").model)
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  _, abs_state = abstract_model(registry.factory(cfg), mesh)
  leaves = jax.tree.leaves(abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  total = sum(int(np.prod(v.get_value().shape)) for v in leaves)
  assert total == published
  assert total == _hf_parameter_count(cfg)
  assert replicated_fraction(abs_state) <= 0.02


def test_config_errors_name_the_key(config):
  bad = config.model.copy_and_resolve_references()
  bad.vision.deepstack_visual_indexes = (0, 9)
  with pytest.raises(ValueError, match="deepstack_visual_indexes"):
    registry.model_config(bad)
  bad = config.model.copy_and_resolve_references()
  bad.name = "qwen9_vl"
  with pytest.raises(ValueError, match=r"model.name='qwen9_vl' is not one of"):
    registry.model_config(bad)


# ----------------------------------------------------------------------------------------------
# Processor: patch 16, 0.5 normalisation, no default system turn, 0-1000 box coordinates
# ----------------------------------------------------------------------------------------------


class _ImageOnlyProcessor(transformers.Qwen3VLProcessor):
  """Qwen3VLProcessor without a video processor (that one needs torchvision)."""

  def check_argument_for_proper_class(self, argument_name, argument):
    if argument_name == "video_processor" and argument is None:
      return None
    return super().check_argument_for_proper_class(argument_name, argument)


@pytest.fixture(scope="module")
def processors(config, tmp_path_factory):
  """(ours, HF Qwen3VLProcessor) on the tiny tokenizer; HF's PIL image processor with Qwen3-VL's
  published settings (its default backend needs torchvision)."""
  from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_qwen2_vl
  from zwz_jax.data import processor as proc
  from zwz_jax.data import tiny_tokenizer
  tok = proc.load_tokenizer("", config)
  d = str(tmp_path_factory.mktemp("tok"))
  tiny_tokenizer.save(tok, d)
  v, p = config.model.vision, config.processor
  image_processor = hf_qwen2_vl.Qwen2VLImageProcessorPil(
      min_pixels=p.min_pixels, max_pixels=p.max_pixels, patch_size=v.patch_size,
      temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
      image_mean=list(p.image_mean), image_std=list(p.image_std))
  hf = _ImageOnlyProcessor(image_processor=image_processor, tokenizer=transformers.Qwen2TokenizerFast.from_pretrained(d),
                           video_processor=None)
  return proc.Processor.from_config(config, tok), hf


@pytest.mark.parametrize("answer", [None, "blue"])
def test_chat_prompt_matches_qwen3_vl_template(processors, answer):
  from tests.tiny_hf_vlm import QWEN3_VL_CHAT_TEMPLATE
  from zwz_jax.data import processor as proc
  ours, hf = processors
  question = "What colour is the box?"
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
  if answer is not None:
    messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
  want = hf.tokenizer.apply_chat_template(messages, chat_template=QWEN3_VL_CHAT_TEMPLATE, tokenize=False,
                                          add_generation_prompt=answer is None)
  assert ours.system_prompt == ""
  assert proc.chat_prompt(question, num_images=1, system_prompt=ours.system_prompt, answer=answer) == want
  assert not want.startswith("<|im_start|>system")


def test_processor_and_positions_match_hf(processors, auto_models):
  from zwz_jax.data import processor as proc
  ours, hf_proc = processors
  _, hf_model = auto_models
  rng = np.random.default_rng(7)
  for sizes in ([(57, 83), (400, 90)], [(1000, 800), (30, 20)]):
    images = ref.images(rng, sizes)
    question = "How many circles are inside the red box?"
    out = ours(images, question)
    want = hf_proc(images=images, text=[proc.chat_prompt(question, num_images=2, system_prompt="")],
                   return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"], want["input_ids"][0])
    np.testing.assert_array_equal(out["grid_thw"], want["image_grid_thw"])
    assert np.abs(out["pixel_values"] - want["pixel_values"]).max() <= 1e-5
    with torch.no_grad():
      pos, _ = hf_model.model.get_rope_index(torch.as_tensor(want["input_ids"]),
                                             torch.as_tensor(want["mm_token_type_ids"]),
                                             image_grid_thw=torch.as_tensor(want["image_grid_thw"]))
    np.testing.assert_array_equal(out["positions"], pos.numpy()[:, 0])


def test_coords_grounding_uses_the_0_to_1000_scale(processors):
  from PIL import Image
  from zwz_jax import records
  ours, _ = processors
  img = Image.new("RGB", (400, 200))
  _, text = records.ground_view(img, "What is it?", (100, 50, 200, 150), "coords", **ours.box_frame(*img.size))
  assert "[250, 250, 500, 750]" in text and "0-1000" in text


# ----------------------------------------------------------------------------------------------
# Training, GRPO and eval run unchanged with a Qwen3-VL config
# ----------------------------------------------------------------------------------------------


def test_train_grpo_and_eval_launchers_run_qwen3(tmp_path_factory, tmp_path):
  import os
  import subprocess
  import sys
  from tests import record_fixtures
  records_dir = str(tmp_path_factory.mktemp("q3_records"))
  record_fixtures.write_records(records_dir, 16, seed=3, sizes=(150, 300))
  env = {**os.environ, "TQDM_DISABLE": "1"}
  # One bucket: one compile per program.
  run = lambda script, *a: subprocess.run([sys.executable, f"{LAUNCH}/{script}", f"--config={CONFIGS}/tiny_qwen3.py",
                                           f"--config.data.train=('{records_dir}',)",
                                           "--config.data.buckets=((320, 512),)", *a],
                                          capture_output=True, text=True, check=False, env=env)
  sft, rl = tmp_path / "sft", tmp_path / "grpo"
  out = run("train.py", f"--workdir={sft}", "--config.train.steps=2", "--config.train.warmup_steps=1",
            "--config.train.log_every=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 2" in out.stdout
  out = run("train.py", f"--workdir={rl}", "--config.trainer=grpo", f"--config.train.init_from={sft}",
            "--config.train.steps=1", "--config.train.warmup_steps=0", "--config.grpo.num_generations=2",
            "--config.grpo.max_new_tokens=3", "--config.grpo.dynamic_sampling=false")
  assert out.returncode == 0, out.stderr[-3000:]
  out = subprocess.run([sys.executable, f"{LAUNCH}/eval.py", f"--config={CONFIGS}/tiny_qwen3.py",
                        f"--config.eval.benchmarks={records_dir}", "--config.eval.max_items=4",
                        "--config.eval.max_new_tokens=3", f"--checkpoint={rl}", f"--out={tmp_path / 'eval'}"],
                       capture_output=True, text=True, check=False, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "eval" / "report.json").exists()


def test_launch_convert_refuses_a_checkpoint_of_the_other_family(tmp_path):
  import subprocess
  import sys
  from tests.tiny_hf_vlm import save_tiny_qwen2_5_vl
  hf_dir = save_tiny_qwen2_5_vl(str(tmp_path / "qwen2_5"))
  out = subprocess.run([sys.executable, f"{LAUNCH}/convert.py", f"--config={CONFIGS}/tiny_qwen3.py", f"--hf_dir={hf_dir}",
                        f"--out={tmp_path / 'params'}"], capture_output=True, text=True, check=False)
  assert out.returncode != 0
  assert "model.name: config 'qwen3_vl', checkpoint 'qwen2_5_vl'" in out.stderr
