"""Device mesh, the one logical-axis rules table, and sharded model creation.

Every parameter and key activation in the model carries logical axis names (``logical_axes``
metadata on ``nnx.Param``); this module is the only place that maps them onto the physical
``('data', 'fsdp', 'tensor')`` mesh. Change a rule here and the whole model follows.
Shardings are derived here rather than with flax's `nnx.get_named_sharding` so that a dimension that
does not divide its mesh axes is caught before any array exists, naming the parameter, its logical
axis and the rule to change.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated). The pattern follows MaxText's
# `logical_axis_rules`: weights are sharded over `fsdp` on their model dimension and over `tensor`
# on heads / MLP / vocab (Megatron-style), activations over (data, fsdp) on batch.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # text decoder weights
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # the layer axis of parameters stacked for a scan over layers
    # vision tower weights
    ("vision_patch", None),
    ("vision_pos", None),  # Qwen3-VL's learned position table rows
    ("vision_embed", "fsdp"),
    ("vision_qkv", None),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("merger_in", "fsdp"),
    ("merger_hidden", "tensor"),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    # The residual stream between layers (what full remat keeps for the backward): its length split
    # over `tensor` as well (Megatron's sequence parallelism), so every tensor-parallel rank holds a
    # share instead of a copy; XLA gathers it for the layer's matmuls and reduce-scatters their sums
    # back, which is the all-reduce it replaces, split in two.
    ("act_residual_length", "tensor"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
_RULES = dict(LOGICAL_AXIS_RULES)


class ShardingError(ValueError):
  """A mesh that does not divide the model, or an unknown logical axis."""


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh; one axis may be -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ShardingError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ShardingError(
          f"mesh: {len(devices)} devices are not divisible by the fixed axes "
          f"{dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ShardingError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
  types = (AxisType.Auto,) * 3
  try:
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=types, devices=devices)
  except NotImplementedError:
    # An axis no product of the slice's physical axes equals (tensor=2 on v6e:8x16): split a physical
    # axis, so that the axis still runs between neighbouring chips.
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(tuple(sizes), devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=types)


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per array."""
  used: set[str] = set()
  out = []
  for name in logical_axes:
    if name is None:
      out.append(None)
      continue
    if name not in _RULES:
      raise ShardingError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
    target = _RULES[name]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def _check_divisible(path: str, shape, logical_axes, spec: PartitionSpec, mesh: Mesh) -> None:
  for dim, (size, name, axes) in enumerate(zip(shape, logical_axes, spec)):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else axes
    n = math.prod(mesh.shape[a] for a in axes)
    if size % n:
      raise ShardingError(
          f"{path}: dimension {dim} ({name!r}, size {size}) is not divisible by mesh axes "
          f"{'x'.join(axes)} = {n} (mesh {dict(mesh.shape)}); choose a mesh that divides the model "
          f"or change the rule for {name!r} in zwz_jax.sharding.LOGICAL_AXIS_RULES")


def variable_sharding(path: str, var: nnx.Variable, mesh: Mesh) -> NamedSharding:
  axes = var.get_metadata().get("logical_axes")
  shape = var.get_value().shape
  if axes is None:
    if len(shape) and math.prod(shape) > 1:
      raise ShardingError(f"{path}: parameter of shape {shape} has no logical_axes")
    return NamedSharding(mesh, PartitionSpec())
  if len(axes) != len(shape):
    raise ShardingError(f"{path}: logical_axes {axes} do not match shape {shape}")
  spec = logical_to_spec(axes)
  _check_divisible(path, shape, axes, spec, mesh)
  return NamedSharding(mesh, spec)


def _path_str(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def state_shardings(state: nnx.State, mesh: Mesh):
  """The NamedSharding of every variable in `state` (concrete or abstract), same tree structure."""
  return jax.tree_util.tree_map_with_path(
      lambda p, v: v.replace(variable_sharding(_path_str(p), v, mesh)),
      state,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(make_model: Callable[[], nnx.Module], mesh: Mesh):
  """(graphdef, abstract state with shardings) without allocating anything."""
  gdef, abs_state = nnx.split(nnx.eval_shape(make_model))
  shardings = state_shardings(abs_state, mesh)
  abs_state = jax.tree.map(
      lambda a, s: a.replace(jax.ShapeDtypeStruct(a.get_value().shape, a.get_value().dtype, sharding=s.get_value())),
      abs_state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return gdef, abs_state


def create_sharded_model(make_model: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
  """Initialises the model directly into its sharding: no host ever holds the full weights."""
  gdef, abs_state = abstract_model(make_model, mesh)
  out_shardings = jax.tree.map(
      lambda a: a.get_value().sharding, abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))

  @jax.jit(out_shardings=out_shardings)
  def init():
    state = nnx.state(make_model())
    return jax.tree.map(lambda v: v.get_value(), state, is_leaf=lambda x: isinstance(x, nnx.Variable))

  with jax.set_mesh(mesh):
    values = init()
  state = jax.tree.map(lambda a, v: a.replace(v), abs_state, values,
                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(gdef, state)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation; a no-op outside a mesh context (single device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes))


def sequence_parallel() -> bool:
  """Whether the residual stream is split over `tensor` here: under a mesh whose tensor axis has
  more than one device. Elsewhere the helpers below add nothing to the program (constraints
  that change no sharding still steer XLA: a 7B step on v5p:4x4x4 took 0.76 GiB more with them)."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and dict(mesh.shape).get("tensor", 1) > 1


def constrain_residual(x: jax.Array) -> jax.Array:
  """Sharding constraint on the residual stream (B, L, E) between layers: length split over
  `tensor` (sequence parallelism); a one-token decode step keeps its length whole."""
  length = "act_residual_length" if x.shape[1] > 1 and sequence_parallel() else "act_length"
  return constrain(x, ("act_batch", length, "act_embed"))


def gather_length(x: jax.Array) -> jax.Array:
  """A normed residual (B, L, E) entering a layer's matmuls, whole along its length: sequence
  parallelism's all-gather, so that the matmuls split their rows over the batch axes alone (left
  to itself, XLA split the flattened (batch x length) rows over fsdp and tensor at once, and
  gathered a 7B step's activations of every example onto each chip)."""
  if not sequence_parallel():
    return x
  return constrain(x, ("act_batch", "act_length", "act_embed"))


def split_heads(x: jax.Array) -> jax.Array:
  """An attention output (B, L, heads, D) entering its projection, split by head, and so its
  cotangent in the backward: else, with the residual split by position, XLA splits the attention's
  backward by position too and moves its (T x S) scores between ranks."""
  if not sequence_parallel():
    return x
  return constrain(x, ("act_batch", "act_length", "act_heads", None))


def gather_length_grad(x: jax.Array) -> jax.Array:
  """Identity on a layer's output (B, L, E) before the residual add, whose cotangent comes back
  whole along its length: the transpose of the forward's reduce-scatter, so that the backward
  matmuls split their rows as the forward's did."""
  return _gather_length_grad(x) if sequence_parallel() else x


@jax.custom_vjp
def _gather_length_grad(x):
  return x


_gather_length_grad.defvjp(lambda x: (x, None), lambda _, g: (gather_length(g),))


def replicated_fraction(abs_state: nnx.State) -> float:
  """Share of parameters (by count) that are fully replicated under their sharding."""
  total = repl = 0
  for v in jax.tree.leaves(abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    n = int(np.prod(v.get_value().shape))
    total += n
    if all(a is None for a in v.get_value().sharding.spec):
      repl += n
  return repl / max(total, 1)
