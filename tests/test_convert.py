"""HF safetensors -> NNX: both naming schemes, bf16 shards, streaming into a mesh, clear errors."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from tests.shared import CONFIGS, LAUNCH
from tests import hf_reference as ref
from zwz_jax.config import load_config
from zwz_jax.models import convert, safetensors_io
from zwz_jax.models.qwen2_5_vl import ModelConfig
from zwz_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def setup(tiny_config, tmp_path_factory):
  cfg = ModelConfig.from_config(tiny_config.model)
  hf = ref.hf_model(cfg, seed=1)
  path = tmp_path_factory.mktemp("hf")
  hf.save_pretrained(path)
  return cfg, hf, str(path)


def _one_device():
  return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def _params(model) -> dict[str, np.ndarray]:
  return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def _rewrite(src: str, dst: str, edit) -> None:
  """Copies a checkpoint, passing every (name, array) through `edit` (None drops the tensor)."""
  with safetensors_io.SafetensorsCheckpoint(src) as ckpt:
    items = [edit(k, np.array(ckpt.get(k))) for k in ckpt.keys()]
  safetensors_io.write_safetensors(dst, [i for i in items if i is not None])
  with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
    g.write(f.read())


def test_loaded_weights_equal_hf_state_dict(setup):
  cfg, hf, path = setup
  params = _params(convert.load_hf_state(cfg, path, _one_device()))
  sd = {convert.canonical_hf_name(k, cfg): v.numpy() for k, v in hf.state_dict().items()}
  for r in convert.rules(cfg):
    np.testing.assert_array_equal(r.to_hf(params[r.ours]), sd[r.hf], err_msg=r.hf)


def test_transformers_internal_names_load_too(setup, tmp_path):
  """`model.visual.*` / `model.language_model.*` (transformers' module names) load like `visual.*`."""
  cfg, _, path = setup

  def rename(k, a):
    k = k.replace("visual.", "model.visual.", 1) if k.startswith("visual.") else k
    return (k.replace("model.", "model.language_model.", 1) if k.startswith("model.") and
            not k.startswith("model.visual.") else k), a

  _rewrite(path, str(tmp_path), rename)
  a = _params(convert.load_hf_state(cfg, path, _one_device()))
  b = _params(convert.load_hf_state(cfg, str(tmp_path), _one_device()))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_bf16_sharded_checkpoint_streams_into_a_mesh(setup, tmp_path):
  cfg, hf, _ = setup
  hf.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="100KB")
  hf.to(torch.float32)  # the fixture is shared: restore it
  assert (tmp_path / "model.safetensors.index.json").exists()
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  model = convert.load_hf_state(cfg, str(tmp_path), mesh)
  q = model.layers[1].attn.q_kernel[...]
  assert q.dtype == np.float32 and q.sharding.mesh.shape == mesh.shape
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  single = _params(convert.load_hf_state(cfg, str(tmp_path), _one_device()))
  sharded = _params(model)
  assert all(np.array_equal(single[k], sharded[k]) for k in single)
  w = hf.model.language_model.layers[1].self_attn.q_proj.weight.detach().to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(single["layers.1.attn.q_kernel"].reshape(-1, w.shape[0]).T, w)


# Measured in a fresh process: tracemalloc counts every thread's allocations, and threads left by
# earlier tests in a worker (checkpoint writers, data readers) made the peak depend on test order.
_PEAK_SCRIPT = """
import sys, tracemalloc
import jax
from zwz_jax.config import load_config
from zwz_jax.models import convert
from zwz_jax.models.qwen2_5_vl import ModelConfig
from zwz_jax.sharding import make_mesh
cfg = ModelConfig.from_config(load_config(sys.argv[2], sys.argv[3:]).model)
mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
tracemalloc.start()
convert.load_hf_state(cfg, sys.argv[1], mesh)
print(tracemalloc.get_traced_memory()[1])
"""


def test_host_memory_peaks_near_one_tensor(tmp_path):
  """Streaming: host allocations stay near the largest tensor, far below the checkpoint size."""
  overrides = ["model.text.num_layers=12", "model.text.hidden_size=256", "model.text.intermediate_size=1024",
               "model.text.mrope_section=(4,6,6)", "model.text.num_heads=8", "model.vision.out_hidden_size=256"]
  cfg = ModelConfig.from_config(load_config(f"{CONFIGS}/tiny.py", overrides).model)
  ref.hf_model(cfg).save_pretrained(tmp_path)
  with safetensors_io.SafetensorsCheckpoint(str(tmp_path)) as ckpt:
    sizes = [int(np.prod(ckpt.shape(k))) * 4 for k in ckpt.keys()]
  out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), f"{CONFIGS}/tiny.py", *overrides],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  peak = int(out.stdout.split()[-1])
  # A loader that materialises the checkpoint first would peak above sum(sizes) (plus a copy).
  assert sum(sizes) > 30 * max(sizes)
  print(f"host peak {peak / 2**20:.1f} MiB, largest tensor {max(sizes) / 2**20:.1f} MiB, "
        f"checkpoint {sum(sizes) / 2**20:.1f} MiB")
  assert peak < sum(sizes) / 5, (peak, max(sizes), sum(sizes))


def test_missing_tensor_is_named_with_its_shape(setup, tmp_path):
  cfg, _, path = setup
  _rewrite(path, str(tmp_path), lambda k, a: None if k == "model.layers.1.mlp.up_proj.weight" else (k, a))
  with pytest.raises(convert.CheckpointMismatchError,
                     match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight' \(expected shape \(256, 128\)\)"):
    convert.load_hf_state(cfg, str(tmp_path), _one_device())


def test_misshaped_tensor_names_both_shapes(setup, tmp_path):
  cfg, _, path = setup
  _rewrite(path, str(tmp_path), lambda k, a: (k, a[:, :30]) if k == "visual.blocks.2.attn.qkv.weight" else (k, a))
  with pytest.raises(convert.CheckpointMismatchError,
                     match=r"'visual\.blocks\.2\.attn\.qkv\.weight' has shape \(192, 30\) .* expects \(192, 64\)"):
    convert.load_hf_state(cfg, str(tmp_path), _one_device())


def test_unexpected_tensor_means_wrong_config(setup, tmp_path):
  cfg, _, path = setup
  extra = [("model.layers.7.mlp.up_proj.weight", np.zeros((2, 2), np.float32))]
  with safetensors_io.SafetensorsCheckpoint(path) as ckpt:
    safetensors_io.write_safetensors(str(tmp_path), [(k, np.array(ckpt.get(k))) for k in ckpt.keys()] + extra)
  with pytest.raises(convert.CheckpointMismatchError, match=r"1 unexpected tensors.*layers\.7"):
    convert.load_hf_state(cfg, str(tmp_path), _one_device())


def test_pickled_checkpoints_are_refused(setup, tmp_path):
  cfg, _, _ = setup
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(FileNotFoundError, match="pytorch_model.bin: pickled checkpoints are not loaded"):
    convert.load_hf_state(cfg, str(tmp_path), _one_device())


def test_model_config_from_published_flat_config_json(tmp_path):
  """The flat config.json of the published Qwen2.5-VL-7B-Instruct maps onto configs/student_7b.py."""
  flat = {
      "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
      "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
      "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "max_position_embeddings": 128000, "tie_word_embeddings": False,
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
      "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
      "vision_end_token_id": 151653,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                        "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                        "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                        "temporal_patch_size": 2},
  }
  (tmp_path / "config.json").write_text(json.dumps(flat))
  got = ModelConfig.from_config(_with_dtypes(convert.model_config_from_hf(str(tmp_path))))
  want = ModelConfig.from_config(load_config(f"{CONFIGS}/student_7b.py").model)
  assert got.vision == want.vision and got.text == want.text
  assert got.image_token_id == want.image_token_id


def test_model_config_round_trips_through_hf_config(setup):
  cfg, _, path = setup
  got = ModelConfig.from_config(_with_dtypes(convert.model_config_from_hf(path)))
  assert got.vision == cfg.vision and got.text == cfg.text


def _with_dtypes(model_cfg):
  model_cfg.dtype = "float32"
  model_cfg.param_dtype = "float32"
  return model_cfg


def test_launch_convert_hf_to_orbax_to_hf(setup, tmp_path):
  """The command-line converter: HF -> orbax on an 8-device mesh -> HF, tensors unchanged."""
  import subprocess
  import sys
  cfg, _, path = setup
  run = lambda *a: subprocess.run([sys.executable, f"{LAUNCH}/convert.py", f"--config={CONFIGS}/tiny.py",
                                   "--config.mesh.fsdp=4", "--config.mesh.tensor=2", *a],
                                  capture_output=True, text=True, check=False)
  out = run(f"--hf_dir={path}", f"--out={tmp_path / 'params'}")
  assert out.returncode == 0, out.stderr
  out = run(f"--orbax={tmp_path / 'params'}", f"--to_hf={tmp_path / 'hf'}")
  assert out.returncode == 0, out.stderr
  with safetensors_io.SafetensorsCheckpoint(path) as a, safetensors_io.SafetensorsCheckpoint(str(tmp_path / "hf")) as b:
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
      np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)
  # A config that does not describe the checkpoint is refused field by field.
  out = run("--config.model.text.rms_norm_eps=1e-5", f"--hf_dir={path}", f"--out={tmp_path / 'p2'}")
  assert out.returncode != 0 and "model.text.rms_norm_eps: config 1e-05, checkpoint 1e-06" in out.stderr
