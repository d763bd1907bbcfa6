"""Student model families by `config.model.name`: the config dataclass and the NNX module of each.

Everything that builds a student (training, eval, conversion, benchmarks) goes through here, so a
family added below works with every launcher unchanged.
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from zwz_jax.models import qwen2_5_vl, qwen3_vl

# name -> (ModelConfig, module); the name is also the checkpoint's HF `model_type`.
FAMILIES: dict[str, tuple[type, type]] = {
    "qwen2_5_vl": (qwen2_5_vl.ModelConfig, qwen2_5_vl.Qwen2_5_VL),
    "qwen3_vl": (qwen3_vl.ModelConfig, qwen3_vl.Qwen3_VL),
}


def family_name(model_cfg) -> str:
  """`config.model.name`, checked."""
  name = model_cfg.get("name", "qwen2_5_vl")
  if name not in FAMILIES:
    raise ValueError(f"model.name={name!r} is not one of {sorted(FAMILIES)}")
  return name


def model_config(model_cfg) -> Any:
  """The family's ModelConfig from the `config.model` ConfigDict."""
  return FAMILIES[family_name(model_cfg)][0].from_config(model_cfg)


def name_of(cfg) -> str:
  """Family name of a ModelConfig."""
  for name, (config_cls, _) in FAMILIES.items():
    if type(cfg) is config_cls:  # exact: Qwen3-VL's ModelConfig extends Qwen2.5-VL's
      return name
  raise TypeError(f"not a model config: {type(cfg).__name__}")


def build(cfg, seed: int = 0) -> nnx.Module:
  """A randomly initialised student (call inside `sharding.create_sharded_model` to shard it)."""
  return FAMILIES[name_of(cfg)][1](cfg, rngs=nnx.Rngs(seed))


def factory(cfg, seed: int = 0):
  """`build` as a thunk, the form `sharding.abstract_model` and `create_sharded_model` take."""
  return lambda: build(cfg, seed)


def from_config(config, *, seed: int = 0) -> nnx.Module:
  """Random-init student from the top-level ConfigDict (unsharded)."""
  return build(model_config(config.model), seed)
