"""Shared test setup: 8 fake CPU devices and full-precision matmuls, set before jax loads."""
import os
import pathlib

# Must precede the first jax import: XLA reads the flag once, when the backend starts.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
# CPU even where libtpu is installed (the compile tests reach the TPU compiler through topologies).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# One persistent compilation cache for the suite's processes: a job a test relaunches (resume after
# a kill, a second process, a second demo stage) loads the programs the first launch compiled.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".cache" / "jax"))

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from tests.shared import CONFIGS  # pylint: disable=wrong-import-position
from zwz_jax import config as config_lib  # pylint: disable=wrong-import-position

# Parity tests hold fp32 PyTorch to 1e-4; bf16 passes (TPU) or TF32 (GPU) would not.
jax.config.update("jax_default_matmul_precision", "highest")

# The modules with the longest tests (launched jobs, TPU compiles) first: pytest-xdist hands tests
# out in collection order, and a long test collected last leaves the other worker idle at the end.
HEAVY_FIRST = ("test_grpo.py", "test_train.py", "test_demo.py", "test_compile.py", "test_parity.py", "test_qwen3_vl.py")


def pytest_collection_modifyitems(items):
  rank = lambda item: HEAVY_FIRST.index(item.path.name) if item.path.name in HEAVY_FIRST else len(HEAVY_FIRST)
  items.sort(key=rank)  # stable: each module keeps its order


@pytest.fixture(scope="session")
def tiny_config():
  """configs/tiny.py, loaded once and shared (module-scoped model fixtures build on it).

  Treat it as read-only; for a variant call
  `config_lib.load_config(path, ["model.text.num_layers=1", ...])`.
  """
  return config_lib.load_config(f"{CONFIGS}/tiny.py")


# The whole-model parity suite (tests/test_parity.py, over both families): every attention backend
# that runs on CPU (splash in Pallas interpret mode, cudnn through XLA's implementation of the same
# call), with blocks small enough that the blockwise ones split every attention into many blocks.
BACKENDS = {"dense": 512, "chunked": 16, "splash": 128, "cudnn": 512}


@pytest.fixture(scope="module")
def hf_checkpoint(family_config, tmp_path_factory):
  """(our ModelConfig, a tiny random transformers model, its saved folder) for the module's
  `family_config`."""
  from tests import hf_reference as ref
  from zwz_jax.models import registry
  cfg = registry.model_config(family_config.model)
  hf = ref.hf_model(cfg)
  path = tmp_path_factory.mktemp(f"hf_{registry.name_of(cfg)}")
  hf.save_pretrained(path)
  return cfg, hf, str(path)


def _load(hf_checkpoint, backend: str | None = None):
  import dataclasses
  from zwz_jax.models import convert
  from zwz_jax.sharding import make_mesh
  cfg, hf, path = hf_checkpoint
  if backend is not None:
    cfg = dataclasses.replace(cfg, attention=backend, attention_block=BACKENDS[backend])
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  return convert.load_hf_state(cfg, path, mesh), hf


@pytest.fixture(scope="module", params=list(BACKENDS))
def models(request, hf_checkpoint):
  """(our model under each attention backend, HF model) with identical weights, loaded through
  the safetensors converter."""
  if request.param == "cudnn" and jax.default_backend() == "gpu":
    pytest.skip("on a GPU cudnn is cuDNN's kernel, which takes no float32 (tests/test_attention.py runs it)")
  return _load(hf_checkpoint, request.param)


@pytest.fixture(scope="module")
def auto_models(hf_checkpoint):
  """The same with the config's own backend (auto: dense at these sizes), for tests that do not
  depend on the attention."""
  return _load(hf_checkpoint)
