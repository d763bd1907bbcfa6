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

from zwz_jax import config as config_lib  # pylint: disable=wrong-import-position

# Parity tests hold fp32 PyTorch to 1e-4; bf16 passes (TPU) or TF32 (GPU) would not.
jax.config.update("jax_default_matmul_precision", "highest")

CONFIGS_DIR = REPO_ROOT / "configs"


@pytest.fixture(scope="session")
def tiny_config():
  """configs/tiny.py, loaded once and shared (module-scoped model fixtures build on it).

  Treat it as read-only; for a variant call
  `config_lib.load_config(path, ["model.text.num_layers=1", ...])`.
  """
  return config_lib.load_config(str(CONFIGS_DIR / "tiny.py"))
