"""Hugging Face Qwen2.5-VL and Qwen3-VL checkpoints <-> our NNX state.

Import streams tensor by tensor from (sharded) safetensors: each tensor is memory-mapped,
transformed once to our layout and handed to `jax.make_array_from_callback`, so every device
receives only its shard and host memory peaks at about one tensor, whatever the model size.
Export writes `transformers`-loadable safetensors shards + config.json, one tensor at a time.
Only safetensors are read: pickled `.bin` checkpoints are refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from zwz_jax.models import qwen3_vl, registry, safetensors_io
from zwz_jax.sharding import _path_str, abstract_model


class CheckpointMismatchError(ValueError):
  """A checkpoint tensor is missing, unexpected or mis-shaped."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one of our parameters is stored in a HF checkpoint."""
  ours: str  # our parameter path, e.g. "layers.3.attn.q_kernel"
  hf: str  # HF tensor name (the layout `save_pretrained` writes)
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _linear(in_shape, out_shape) -> tuple[Callable, Callable]:
  """HF nn.Linear weight (out, in) <-> our kernel in_shape + out_shape."""
  n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
  return (lambda w: w.reshape(n_out, n_in).T.reshape(*in_shape, *out_shape),
          lambda k: k.reshape(n_in, n_out).T)


def _reshape(shape, hf_shape) -> tuple[Callable, Callable]:
  return (lambda w: w.reshape(shape)), (lambda k: k.reshape(hf_shape))


def rules(cfg) -> list[Rule]:
  """The full parameter mapping for `cfg` (the single source of truth for both directions)."""
  return _qwen3_vl_rules(cfg) if isinstance(cfg, qwen3_vl.ModelConfig) else _qwen2_5_vl_rules(cfg)


def _builders(out: list[Rule]):
  """add(ours, hf, hf_shape, fns), linear(ours, hf, in_shape, out_shape[, bias]), norm(ours, hf, dim)."""

  def add(ours, hf, hf_shape, fns):
    out.append(Rule(ours, hf, tuple(hf_shape), *fns))

  def linear(ours, hf, in_shape, out_shape, bias_ours=None):
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    add(ours, hf + ".weight", (n_out, n_in), _linear(in_shape, out_shape))
    if bias_ours:
      add(bias_ours, hf + ".bias", (n_out,), _reshape(out_shape, (n_out,)))

  def norm(ours, hf, dim):
    add(ours, hf, (dim,), _reshape((dim,), (dim,)))

  return add, linear, norm


def _qwen2_5_vl_rules(cfg) -> list[Rule]:
  """Qwen2.5-VL, named as the published checkpoints are (visual.*, model.*)."""
  v, t = cfg.vision, cfg.text
  out: list[Rule] = []
  add, linear, norm = _builders(out)
  e, vh, vd, m = v.hidden_size, v.num_heads, v.head_dim, v.intermediate_size
  patch_hf = (e, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  # Conv3d with kernel == stride over the (C, T, P, P)-flattened patch is a plain linear map.
  add("visual.patch_kernel", "visual.patch_embed.proj.weight", patch_hf,
      (lambda w: w.reshape(e, -1).T, lambda k: k.T.reshape(patch_hf)))
  for i in range(v.depth):
    o, h = f"visual.blocks.{i}", f"visual.blocks.{i}"
    norm(f"{o}.norm1.scale", f"{h}.norm1.weight", e)
    norm(f"{o}.norm2.scale", f"{h}.norm2.weight", e)
    linear(f"{o}.attn.qkv_kernel", f"{h}.attn.qkv", (e,), (3, vh, vd), f"{o}.attn.qkv_bias")
    linear(f"{o}.attn.proj_kernel", f"{h}.attn.proj", (vh, vd), (e,), f"{o}.attn.proj_bias")
    for name in ("gate", "up"):
      linear(f"{o}.mlp.{name}_kernel", f"{h}.mlp.{name}_proj", (e,), (m,), f"{o}.mlp.{name}_bias")
    linear(f"{o}.mlp.down_kernel", f"{h}.mlp.down_proj", (m,), (e,), f"{o}.mlp.down_bias")
  merged = e * v.merge_unit
  norm("visual.merger.norm.scale", "visual.merger.ln_q.weight", e)
  linear("visual.merger.fc1_kernel", "visual.merger.mlp.0", (merged,), (merged,), "visual.merger.fc1_bias")
  linear("visual.merger.fc2_kernel", "visual.merger.mlp.2", (merged,), (v.out_hidden_size,),
         "visual.merger.fc2_bias")

  th, hd, nh, nkv, tm = t.hidden_size, t.head_dim, t.num_heads, t.num_kv_heads, t.intermediate_size
  add("embed", "model.embed_tokens.weight", (t.vocab_size, th), _reshape((t.vocab_size, th), (t.vocab_size, th)))
  for i in range(t.num_layers):
    o, h = f"layers.{i}", f"model.layers.{i}"
    norm(f"{o}.input_norm.scale", f"{h}.input_layernorm.weight", th)
    norm(f"{o}.post_attn_norm.scale", f"{h}.post_attention_layernorm.weight", th)
    linear(f"{o}.attn.q_kernel", f"{h}.self_attn.q_proj", (th,), (nh, hd), f"{o}.attn.q_bias")
    linear(f"{o}.attn.k_kernel", f"{h}.self_attn.k_proj", (th,), (nkv, hd), f"{o}.attn.k_bias")
    linear(f"{o}.attn.v_kernel", f"{h}.self_attn.v_proj", (th,), (nkv, hd), f"{o}.attn.v_bias")
    linear(f"{o}.attn.o_kernel", f"{h}.self_attn.o_proj", (nh, hd), (th,))
    linear(f"{o}.mlp.gate_kernel", f"{h}.mlp.gate_proj", (th,), (tm,))
    linear(f"{o}.mlp.up_kernel", f"{h}.mlp.up_proj", (th,), (tm,))
    linear(f"{o}.mlp.down_kernel", f"{h}.mlp.down_proj", (tm,), (th,))
  norm("norm.scale", "model.norm.weight", th)
  if not t.tie_word_embeddings:
    linear("lm_head", "lm_head", (th,), (t.vocab_size,))
  return out


def _qwen3_vl_rules(cfg) -> list[Rule]:
  """Qwen3-VL, named as the published checkpoints are (model.visual.*, model.language_model.*)."""
  v, t = cfg.vision, cfg.text
  out: list[Rule] = []
  add, linear, norm = _builders(out)

  def layer_norm(ours, hf, dim):
    norm(f"{ours}.scale", f"{hf}.weight", dim)
    norm(f"{ours}.bias", f"{hf}.bias", dim)

  e, vh, vd, m = v.hidden_size, v.num_heads, v.head_dim, v.intermediate_size
  patch_hf = (e, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  add("visual.patch_kernel", "model.visual.patch_embed.proj.weight", patch_hf,
      (lambda w: w.reshape(e, -1).T, lambda k: k.T.reshape(patch_hf)))
  norm("visual.patch_bias", "model.visual.patch_embed.proj.bias", e)
  n = v.num_position_embeddings
  add("visual.pos_embed", "model.visual.pos_embed.weight", (n, e), _reshape((n, e), (n, e)))
  for i in range(v.depth):
    o, h = f"visual.blocks.{i}", f"model.visual.blocks.{i}"
    layer_norm(f"{o}.norm1", f"{h}.norm1", e)
    layer_norm(f"{o}.norm2", f"{h}.norm2", e)
    linear(f"{o}.attn.qkv_kernel", f"{h}.attn.qkv", (e,), (3, vh, vd), f"{o}.attn.qkv_bias")
    linear(f"{o}.attn.proj_kernel", f"{h}.attn.proj", (vh, vd), (e,), f"{o}.attn.proj_bias")
    linear(f"{o}.mlp.fc1_kernel", f"{h}.mlp.linear_fc1", (e,), (m,), f"{o}.mlp.fc1_bias")
    linear(f"{o}.mlp.fc2_kernel", f"{h}.mlp.linear_fc2", (m,), (e,), f"{o}.mlp.fc2_bias")
  merged = e * v.merge_unit

  def merger(o, h, norm_dim):
    layer_norm(f"{o}.norm", f"{h}.norm", norm_dim)
    linear(f"{o}.fc1_kernel", f"{h}.linear_fc1", (merged,), (merged,), f"{o}.fc1_bias")
    linear(f"{o}.fc2_kernel", f"{h}.linear_fc2", (merged,), (v.out_hidden_size,), f"{o}.fc2_bias")

  merger("visual.merger", "model.visual.merger", e)
  for j in range(len(v.deepstack_visual_indexes)):
    merger(f"visual.deepstack_mergers.{j}", f"model.visual.deepstack_merger_list.{j}", merged)

  th, hd, nh, nkv, tm = t.hidden_size, t.head_dim, t.num_heads, t.num_kv_heads, t.intermediate_size
  lm = "model.language_model"
  add("embed", f"{lm}.embed_tokens.weight", (t.vocab_size, th), _reshape((t.vocab_size, th), (t.vocab_size, th)))
  bias = lambda name: name if t.attention_bias else None
  for i in range(t.num_layers):
    o, h = f"layers.{i}", f"{lm}.layers.{i}"
    norm(f"{o}.input_norm.scale", f"{h}.input_layernorm.weight", th)
    norm(f"{o}.post_attn_norm.scale", f"{h}.post_attention_layernorm.weight", th)
    linear(f"{o}.attn.q_kernel", f"{h}.self_attn.q_proj", (th,), (nh, hd), bias(f"{o}.attn.q_bias"))
    linear(f"{o}.attn.k_kernel", f"{h}.self_attn.k_proj", (th,), (nkv, hd), bias(f"{o}.attn.k_bias"))
    linear(f"{o}.attn.v_kernel", f"{h}.self_attn.v_proj", (th,), (nkv, hd), bias(f"{o}.attn.v_bias"))
    linear(f"{o}.attn.o_kernel", f"{h}.self_attn.o_proj", (nh, hd), (th,), bias(f"{o}.attn.o_bias"))
    norm(f"{o}.attn.q_norm.scale", f"{h}.self_attn.q_norm.weight", hd)
    norm(f"{o}.attn.k_norm.scale", f"{h}.self_attn.k_norm.weight", hd)
    linear(f"{o}.mlp.gate_kernel", f"{h}.mlp.gate_proj", (th,), (tm,))
    linear(f"{o}.mlp.up_kernel", f"{h}.mlp.up_proj", (th,), (tm,))
    linear(f"{o}.mlp.down_kernel", f"{h}.mlp.down_proj", (tm,), (th,))
  norm("norm.scale", f"{lm}.norm.weight", th)
  if not t.tie_word_embeddings:
    linear("lm_head", "lm_head", (th,), (t.vocab_size,))
  return out


# transformers >= 5 names Qwen2.5-VL's modules model.visual.* / model.language_model.*; its published
# checkpoints use visual.* / model.*. Both are read; the latter is written. Qwen3-VL was published
# with the new names, which are the only ones.
_QWEN2_5_VL_ALIASES = ((re.compile(r"^model\.visual\."), "visual."),
                       (re.compile(r"^model\.language_model\."), "model."))


def canonical_hf_name(name: str, cfg) -> str:
  if isinstance(cfg, qwen3_vl.ModelConfig):
    return name
  for pattern, repl in _QWEN2_5_VL_ALIASES:
    name = pattern.sub(repl, name)
  return name


def _open_checkpoint(path: str) -> safetensors_io.SafetensorsCheckpoint:
  if os.path.isdir(path):
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
      pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
      hint = f" (found {', '.join(sorted(pickles))}: pickled checkpoints are not loaded; " \
             "convert them to safetensors first)" if pickles else ""
      raise FileNotFoundError(f"no safetensors checkpoint in {path}{hint}")
  return safetensors_io.SafetensorsCheckpoint(path)


def load_hf_state(model_cfg, path: str, mesh: jax.sharding.Mesh, *, strict: bool = True):
  """Reads a HF safetensors checkpoint of `model_cfg`'s family straight into a sharded NNX model.

  Every tensor is checked (name and shape) before any is read; the error lists all problems.
  """
  gdef, abs_state = abstract_model(registry.factory(model_cfg), mesh)
  flat = {_path_str(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
  table = rules(model_cfg)
  with _open_checkpoint(path) as ckpt:
    names = {canonical_hf_name(k, model_cfg): k for k in ckpt.keys()}
    problems = []
    for r in table:
      if r.ours not in flat:
        raise AssertionError(f"conversion rule for unknown parameter {r.ours}")
      if r.hf not in names:
        problems.append(f"missing tensor {r.hf!r} (expected shape {r.hf_shape}) for parameter {r.ours}")
      elif tuple(ckpt.shape(names[r.hf])) != r.hf_shape:
        problems.append(f"tensor {names[r.hf]!r} has shape {tuple(ckpt.shape(names[r.hf]))} in the "
                        f"checkpoint but the model config expects {r.hf_shape} (parameter {r.ours})")
    unused = sorted(set(names) - {r.hf for r in table})
    if model_cfg.text.tie_word_embeddings:
      unused = [n for n in unused if n != "lm_head.weight"]  # tied: the head is the embedding
    if unused and strict:
      problems.append(f"{len(unused)} unexpected tensors, e.g. {unused[:5]} (wrong config for this checkpoint?)")
    unmapped = set(flat) - {r.ours for r in table}
    if unmapped:
      raise AssertionError(f"parameters without a conversion rule: {sorted(unmapped)}")
    if problems:
      raise CheckpointMismatchError(f"checkpoint {path} does not match the model:\n  " + "\n  ".join(problems))

    values = {}
    for r in table:
      target = flat[r.ours].get_value()
      # Transform once (one tensor in host memory), then each device copies out its shard.
      src = np.ascontiguousarray(r.to_ours(ckpt.get(names[r.hf])))
      dtype = target.dtype
      values[r.ours] = jax.make_array_from_callback(
          target.shape, target.sharding, lambda idx, src=src, dtype=dtype: np.asarray(src[idx], dtype=dtype))
      del src
  state = jax.tree_util.tree_map_with_path(
      lambda p, v: v.replace(values[_path_str(p)]), abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(gdef, state)


def _host_value(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def hf_tensors(model, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) one tensor at a time, gathering each from its shards."""
  state = nnx.state(model, nnx.Param)
  flat = {_path_str(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
  for r in rules(model.cfg):
    arr = r.to_hf(_host_value(flat[r.ours].get_value()))
    yield r.hf, np.ascontiguousarray(arr if dtype is None else arr.astype(dtype))


def hf_config_dict(cfg, dtype: str = "float32") -> dict:
  """config.json for `transformers`' Qwen2_5_VL- or Qwen3VLForConditionalGeneration."""
  v, t = cfg.vision, cfg.text
  qwen3 = isinstance(cfg, qwen3_vl.ModelConfig)
  family = "qwen3_vl" if qwen3 else "qwen2_5_vl"
  text = {
      "model_type": f"{family}_text",
      "vocab_size": t.vocab_size,
      "hidden_size": t.hidden_size,
      "intermediate_size": t.intermediate_size,
      "num_hidden_layers": t.num_layers,
      "num_attention_heads": t.num_heads,
      "num_key_value_heads": t.num_kv_heads,
      "hidden_act": "silu",
      "rms_norm_eps": t.rms_norm_eps,
      "max_position_embeddings": t.max_position_embeddings,
      "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                          "mrope_section": list(t.mrope_section)},
      "tie_word_embeddings": t.tie_word_embeddings,
  }
  vision = {
      "model_type": f"{family}_vision",
      "depth": v.depth,
      "hidden_size": v.hidden_size,
      "intermediate_size": v.intermediate_size,
      "num_heads": v.num_heads,
      "in_channels": v.in_channels,
      "patch_size": v.patch_size,
      "temporal_patch_size": v.temporal_patch_size,
      "spatial_merge_size": v.spatial_merge_size,
      "out_hidden_size": v.out_hidden_size,
      "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
  }
  if qwen3:
    text.update(head_dim=t.head_dim, attention_bias=t.attention_bias)
    text["rope_parameters"]["mrope_interleaved"] = True
    vision.update(num_position_embeddings=v.num_position_embeddings, hidden_act="gelu_pytorch_tanh",
                  deepstack_visual_indexes=list(v.deepstack_visual_indexes))
  else:
    vision.update(window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
                  tokens_per_second=v.tokens_per_second, hidden_act="silu")
  return {
      "architectures": ["Qwen3VLForConditionalGeneration" if qwen3 else "Qwen2_5_VLForConditionalGeneration"],
      "model_type": family,
      "dtype": dtype,
      "image_token_id": cfg.image_token_id,
      "video_token_id": cfg.video_token_id,
      "vision_start_token_id": cfg.vision_start_token_id,
      "vision_end_token_id": cfg.vision_end_token_id,
      "tie_word_embeddings": t.tie_word_embeddings,
      "text_config": text,
      "vision_config": vision,
  }


def save_hf(model, out_dir: str, *, dtype: str | None = None,
            max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes `model` as a HF checkpoint directory (safetensors shards + config.json)."""
  np_dtype = None if dtype is None else jnp.dtype(dtype)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  tensors = hf_tensors(model, np_dtype)
  if jax.process_index() != 0:  # every process joins the gathers; one writes
    for _ in tensors:
      pass
    return
  safetensors_io.write_safetensors(out_dir, tensors, max_shard_bytes=max_shard_bytes)
  name = str(np_dtype or model.cfg.param_dtype)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config_dict(model.cfg, jnp.dtype(name).name), f, indent=2)


def model_config_from_hf(path: str) -> ml_collections.ConfigDict:
  """`config.model` section built from a HF checkpoint's config.json (Qwen2.5-VL or Qwen3-VL).

  Reads both the nested (text_config) layout of recent transformers and the older layouts of the
  published checkpoints: Qwen2.5-VL's flat one (`rope_scaling: {type: mrope, ...}` at the top
  level), Qwen3-VL's `rope_scaling` and `rope_theta` inside text_config with `tie_word_embeddings`
  only at the top level.
  """
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  family = hf.get("model_type")
  if family not in registry.FAMILIES:
    raise ValueError(f"{path}/config.json: model_type {family!r} is not one of {sorted(registry.FAMILIES)}")
  text = dict(hf.get("text_config") or {})
  for k, val in hf.items():  # flat layout: text fields at the top level
    if k not in ("text_config", "vision_config"):
      text.setdefault(k, val)
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  vis = hf["vision_config"]
  c = ml_collections.ConfigDict()
  c.name = family
  common = dict(
      depth=vis["depth"], hidden_size=vis["hidden_size"], intermediate_size=vis["intermediate_size"],
      num_heads=vis["num_heads"], in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
      temporal_patch_size=vis.get("temporal_patch_size", 2), spatial_merge_size=vis.get("spatial_merge_size", 2),
      out_hidden_size=vis["out_hidden_size"],
      rope_theta=float((vis.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
  if family == "qwen3_vl":
    c.vision = dict(common, patch_size=vis.get("patch_size", 16),
                    num_position_embeddings=vis.get("num_position_embeddings", 2304),
                    deepstack_visual_indexes=tuple(vis["deepstack_visual_indexes"]), layer_norm_eps=1e-6)
  else:
    c.vision = dict(common, patch_size=vis.get("patch_size", 14), window_size=vis.get("window_size", 112),
                    fullatt_block_indexes=tuple(vis["fullatt_block_indexes"]), rms_norm_eps=1e-6,
                    tokens_per_second=vis.get("tokens_per_second", 2))
  c.text = dict(
      vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
      intermediate_size=text["intermediate_size"], num_layers=text["num_hidden_layers"],
      num_heads=text["num_attention_heads"], num_kv_heads=text["num_key_value_heads"],
      rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
      rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
      mrope_section=tuple(rope["mrope_section"]),
      # The top level decides: Qwen3-VL-8B's text_config omits it (and means False).
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
      max_position_embeddings=text.get("max_position_embeddings", 128000))
  if family == "qwen3_vl":
    c.text.head_dim = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
    c.text.attention_bias = bool(text.get("attention_bias", False))
    if not rope.get("mrope_interleaved", True):
      raise ValueError(f"{path}/config.json: Qwen3-VL with contiguous M-RoPE sections is not supported")
  for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
    c[k] = hf[k]
  return c


def check_config_matches(model_cfg, hf_dir: str) -> None:
  """Raises ValueError listing every field where `model_cfg` (our ModelConfig) differs from the HF
  checkpoint's config.json, so a wrong --config is refused before any weight is read."""
  hf = model_config_from_hf(hf_dir)
  hf.dtype, hf.param_dtype = "float32", "float32"
  ours_name = registry.name_of(model_cfg)
  if hf.name != ours_name:
    raise ValueError(f"--config does not describe the checkpoint in {hf_dir}:\n  "
                     f"model.name: config {ours_name!r}, checkpoint {hf.name!r}")
  theirs = registry.model_config(hf)
  diffs = [f"model.{part}.{f.name}: config {getattr(getattr(model_cfg, part), f.name)!r}, "
           f"checkpoint {getattr(getattr(theirs, part), f.name)!r}"
           for part in ("vision", "text") for f in dataclasses.fields(getattr(model_cfg, part))
           if getattr(getattr(model_cfg, part), f.name) != getattr(getattr(theirs, part), f.name)]
  diffs += [f"model.{k}: config {getattr(model_cfg, k)!r}, checkpoint {getattr(theirs, k)!r}"
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
            if getattr(model_cfg, k) != getattr(theirs, k)]
  if diffs:
    raise ValueError(f"--config does not describe the checkpoint in {hf_dir}:\n  " + "\n  ".join(diffs))
