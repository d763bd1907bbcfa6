"""Ahead-of-time compilation of our jitted functions for a TPU topology, on a machine without a TPU.

libtpu's compile-only client (`jax.experimental.topologies.get_topology_desc`) gives the devices of
a named slice ("v5p:4x4x4"); the config's mesh is laid over them and every function is lowered with
`jax.ShapeDtypeStruct` inputs that carry the real shardings (no weights, no data), then compiled by
the real TPU compiler. Per chip we report what the step holds (parameters, optimizer state, batch:
from the input shardings), the compiler's temporaries and total against the chip's HBM, its FLOPs
and cost-model time (the splash attention kernels, which XLA's cost analysis does not see, added
from the work each names: `kernel_cost`), and the MFU they imply. A program that does not fit is
reported with the compiler's message instead of figures.

Functions: `sft` (the train step, once per bucket of data.buckets), `grpo_update` (the RL update
on prompts x num_generations / num_minibatches rows of prompt + response), `rollout` (prefill +
decode of num_generations samples per prompt, then their log-probs), `eval` (decoding
eval.batch_size prompts at the eval config's image resolution, and with eval.coverage_layer the
forward coverage is read from).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zwz_jax.config import ConfigError
from zwz_jax.models import attention

GiB = 1024**3
CHIPS = ("v4", "v5e", "v5p", "v6e")

# HBM per chip that the compiler lets a program use (its own "available HBM" figure), by device kind.
HBM_BYTES = {
    "TPU v4": 30.75 * GiB,
    "TPU v5 lite": 15.75 * GiB,
    "TPU v5": 95.74 * GiB,  # v5p
    "TPU v6 lite": 31.25 * GiB,
}


class TopologyError(ValueError):
  """A topology name the TPU compiler does not know."""


def compile_only_env() -> None:
  """libtpu looks for TPU metadata when it starts: on a machine without a TPU tell it not to.

  Must run before the first `get_topology_desc`; values already set are kept. JAX itself stays on
  the CPU platform, so nothing else in the process changes."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")  # any valid name: the topology decides
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # No chip to guard: let several compiling processes (test workers, parallel compiles) load libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def topology_devices(name: str) -> list:
  """The TPU devices of a topology name as `get_topology_desc` takes it, e.g. "v5p:4x4x4",
  "v5e:2x2", "v6e:4x4", "v4:2x2x1" (one device per chip: megacore on v4 and v5p)."""
  chip, _, shape = name.partition(":")
  if chip not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise TopologyError(f"--topology={name!r}: expected CHIP:SHAPE with CHIP one of {CHIPS} and SHAPE like "
                        f"2x2 (v5e, v6e) or 2x2x1 (v4, v5p), e.g. v5p:4x4x4")
  compile_only_env()
  from jax.experimental import topologies
  kwargs = {"chip_config_name": "megacore"} if chip == "v4" else {}
  dims = [int(d) for d in shape.split("x")] + [1] * (3 - shape.count("x") - 1)
  if math.prod(dims) < 4:  # smaller than one host (2x2 chips): the slice is the host
    kwargs["chips_per_host_bounds"] = tuple(dims)
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
  except Exception as e:  # the compiler's own words (e.g. a shape the chip does not come in)
    raise TopologyError(f"--topology={name!r} is not a TPU topology the compiler knows: {e}") from None


def hbm_bytes(device_kind: str) -> float:
  if device_kind not in HBM_BYTES:
    raise TopologyError(f"no HBM size known for device kind {device_kind!r}; add it to aot.HBM_BYTES")
  return HBM_BYTES[device_kind]


def per_chip_bytes(tree) -> int:
  """Bytes one chip holds of a tree of ShapeDtypeStruct with shardings (the largest shard)."""
  total = 0
  for a in jax.tree.leaves(tree):
    shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
    total += math.prod(shape) * np.dtype(a.dtype).itemsize
  return total


@dataclasses.dataclass
class Report:
  """One compiled function on one topology; sizes are bytes per chip."""
  function: str
  shape: dict  # rows, tokens, patches (and new tokens for samplers)
  topology: str
  mesh: dict
  device_kind: str
  hbm: float
  held: dict = dataclasses.field(default_factory=dict)  # params / opt_state / batch bytes per chip
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  flops: float = 0.0  # the compiled per-chip program's
  model_flops: float = 0.0  # analytic matmul FLOPs per chip (train steps: forward + backward)
  est_seconds: float = 0.0  # the compiler's cost-model time
  peak_flops: float = 0.0
  compile_seconds: float = 0.0
  error: str = ""  # the compiler's message when it does not fit or does not compile
  cost_error: str = ""  # why there are no FLOPs and time (a cost twin that did not compile or count)

  @property
  def total(self) -> int:
    """Peak HBM of the program: inputs, outputs not aliased to donated inputs, temporaries."""
    return self.argument + self.output - self.alias + self.temp

  @property
  def fits(self) -> bool:
    return not self.error and self.total <= self.hbm

  @property
  def mfu(self) -> float:
    """Model FLOPs (analytic where known, else the compiler's) per cost-model second / peak."""
    flops = self.model_flops or self.flops
    return flops / self.est_seconds / self.peak_flops if self.est_seconds and self.peak_flops else float("nan")

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    # No time, no MFU: null, since NaN is not JSON.
    out.update(total=self.total, fits=self.fits, mfu=self.mfu if math.isfinite(self.mfu) else None)
    return out


# ----------------------------------------------------------------------------------------------
# Abstract inputs
# ----------------------------------------------------------------------------------------------


def batch_shapes(config, rows: int, tokens: int, patches: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a `batch.build_batch` output (labels_mask included) of `rows` examples:
  taken from the batch builder itself, so the contract has one definition."""
  from zwz_jax.data import batch as batch_lib
  empty = batch_lib.build_batch([], vision_cfg=batch_lib.VisionLayout.from_config(config.model),
                                image_token_id=int(config.model.image_token_id), max_tokens=tokens,
                                max_patches=patches)
  out = {}
  for key, x in empty.items():
    shape = list(x.shape)
    shape[batch_lib.row_axis(key)] = rows
    out[key] = jax.ShapeDtypeStruct(tuple(shape), x.dtype)
  return out


def place_batch(mesh, shapes: dict) -> dict:
  """Abstract batch inputs placed as the trainer and the evaluator place batches: rows over the batch
  axes (data x fsdp; zwz_jax.data.batch.placement)."""
  from zwz_jax.data.batch import placement
  return {key: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placement(mesh, key, s.shape))
          for key, s in shapes.items()}


# ----------------------------------------------------------------------------------------------
# The functions
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Program:
  shape: dict
  lowered: Any
  held: dict  # bytes per chip of the inputs by part
  model_flops: float = 0.0  # analytic, whole step (0: not known)
  # XLA's cost analysis counts a loop body once: the train step's micro-batch scan runs this often.
  loop_trips: int = 1
  counted_loops: str = "^$"  # op_names (regex) of the loops `_cost` accounts for


def _held(state: dict, batch: dict) -> dict:
  return {"params": per_chip_bytes(state["params"]), "opt_state": per_chip_bytes(state.get("opt_state", {})),
          "batch": per_chip_bytes(batch)}


def _buckets(config):
  from zwz_jax.data import batch as batch_lib
  from zwz_jax.data import pipeline
  return pipeline.check_buckets(config.data.buckets, batch_lib.VisionLayout.from_config(config.model))


def _train_program(trainer, mesh, shapes: dict, shape: dict) -> _Program:
  from zwz_jax.train import metrics as metrics_lib
  batch = place_batch(mesh, {k: shapes[k] for k in trainer.objective.batch_keys})
  return _Program(shape, trainer._update.lower(trainer.abstract_state, batch), _held(trainer.abstract_state, batch),
                  metrics_lib.batch_train_flops(trainer.model_cfg, batch), int(trainer.config.train.grad_accum_steps),
                  r"^jit\(_update_fn\)/while$")  # the micro-batch scan


def _sft(config, mesh) -> list[_Program]:
  """The train step at every bucket, on the global batch (it splits off grad_accum_steps micro-batches)."""
  from zwz_jax.train.trainer import Trainer
  trainer, rows = Trainer(config, mesh), int(config.data.global_batch_size)
  return [_train_program(trainer, mesh, batch_shapes(config, rows, tokens, patches),
                         {"rows": rows, "tokens": tokens, "patches": patches}) for tokens, patches in _buckets(config)]


def _grpo_trainer(config, mesh):
  """The GRPO trainer whatever config.trainer says (on an SFT config, its trainer would compile the
  SFT loss at GRPO's shapes); no tokenizer: compiled, never run."""
  from zwz_jax.train import grpo
  from zwz_jax.train.trainer import Trainer
  return Trainer(config, mesh, grpo.ClippedObjective(config), grpo.RolloutCollector(config, None))


def _grpo_update(config, mesh) -> list[_Program]:
  """One optimizer update on a mini-batch of rollouts: largest-bucket prompts + max_new_tokens."""
  g = config.grpo
  trainer = _grpo_trainer(config, mesh)
  tokens, patches = _buckets(config)[-1]
  steps = int(g.max_new_tokens)
  rows = int(config.data.global_batch_size) * int(g.num_generations) // int(g.num_minibatches)
  shapes = batch_shapes(config, rows, tokens + steps, patches)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  shapes.update(response=jax.ShapeDtypeStruct((rows, steps), jnp.int32),
                response_mask=jax.ShapeDtypeStruct((rows, steps), jnp.bool_),
                old_logp=f32(rows, steps), advantages=f32(rows), ref_logp=f32(rows, steps))
  return [_train_program(trainer, mesh, shapes, {"rows": rows, "tokens": tokens + steps, "patches": patches})]


def _rollout(config, mesh) -> list[_Program]:
  """Sampling num_generations responses per prompt of the largest bucket; then the responses'
  log-probs under the policy (and the reference), one forward over all the step's rows."""
  from zwz_jax.data.batch import MODEL_INPUTS
  g = config.grpo
  tokens, patches = _buckets(config)[-1]
  sampling = dict(max_new_tokens=int(g.max_new_tokens), temperature=float(g.temperature), top_p=float(g.top_p))
  prompts, steps = int(config.data.global_batch_size), int(g.max_new_tokens)
  sample = _sampler_program(config, mesh, prompts, tokens, patches, int(g.num_generations), sampling)
  trainer = _grpo_trainer(config, mesh)
  rows = prompts * int(g.num_generations)
  shapes = batch_shapes(config, rows, tokens + steps, patches)
  shapes["response"] = jax.ShapeDtypeStruct((rows, steps), jnp.int32)
  batch = place_batch(mesh, {k: shapes[k] for k in MODEL_INPUTS + ("response",)})
  params = trainer.abstract_state["params"]
  logprobs = _Program({"rows": rows, "tokens": tokens + steps, "patches": patches, "log_probs": True},
                      trainer.source._logprobs.lower(trainer, params, batch), _held({"params": params}, batch))
  return [sample, logprobs]


def _eval(config, mesh) -> list[_Program]:
  """Decoding eval.batch_size prompts with one image at processor.max_pixels, with the eval
  section's sampling settings (a key per prompt when sampling, as the evaluator draws), in the
  evaluator's batch: padded to a multiple of the batch axes. With eval.coverage_layer, also the
  forward that coverage is read from."""
  from zwz_jax.data.batch import eval_rows
  from zwz_jax.eval.zoombench import max_shape
  if "eval" not in config:
    raise KeyError("config key eval: the eval sampler is compiled at the eval config's settings "
                   "(e.g. configs/eval_zoombench.py); this config has no eval section")
  tokens, patches = max_shape(config)
  e = config.eval
  sampling = dict(max_new_tokens=int(e.max_new_tokens), temperature=float(e.temperature), top_p=float(e.top_p),
                  top_k=int(e.top_k), presence_penalty=float(e.presence_penalty))
  rows = eval_rows(mesh, int(e.batch_size))
  out = [_sampler_program(config, mesh, rows, tokens, patches, 1, sampling, keys_per_row=float(e.temperature) > 0)]
  if int(e.coverage_layer) >= 0:
    out.append(_coverage_program(config, mesh, rows, tokens, patches, int(e.coverage_layer)))
  return out


PROGRAMS = {"sft": _sft, "grpo_update": _grpo_update, "rollout": _rollout, "eval": _eval}
FUNCTIONS = tuple(PROGRAMS)


def _model_inputs(config, mesh, rows, tokens, patches):
  """(the abstract model, its parameters, the model inputs of `rows` rows), placed on `mesh`."""
  from zwz_jax.data.batch import MODEL_INPUTS
  from zwz_jax.models import registry
  from zwz_jax.params import ParamSpace
  space = ParamSpace(registry.model_config(config.model), mesh, int(config.seed))
  shapes = batch_shapes(config, rows, tokens, patches)
  return space.model(space.abstract), space.abstract, place_batch(mesh, {k: shapes[k] for k in MODEL_INPUTS})


def _sampler_program(config, mesh, prompts, tokens, patches, samples, sampling, keys_per_row=False) -> _Program:
  from zwz_jax.generate import sampler as sampler_lib
  model, params, batch = _model_inputs(config, mesh, prompts, tokens, patches)
  graphdef, state = nnx.split(model)
  if keys_per_row:  # raw key data, placed as the evaluator places it
    from zwz_jax.data.batch import placement
    rng = jax.ShapeDtypeStruct((prompts, 2), jnp.uint32, sharding=placement(mesh, "keys", (prompts, 2)))
  else:
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
  cfg = sampler_lib.SamplingConfig(stop_ids=(0,), **sampling)
  shape = {"rows": prompts * samples, "tokens": tokens, "patches": patches, "new_tokens": sampling["max_new_tokens"]}
  return _Program(shape, sampler_lib._generate.lower(graphdef, state, batch, rng, cfg, samples),
                  _held({"params": params}, batch), counted_loops=r"^jit\(_generate\)/while$")  # the decode loop


def _coverage_program(config, mesh, rows, tokens, patches, layer) -> _Program:
  from zwz_jax.data.batch import placement
  from zwz_jax.eval.zoombench import coverage_forward
  model, params, batch = _model_inputs(config, mesh, rows, tokens, patches)
  query = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=placement(mesh, "last", (rows,)))
  shape = {"rows": rows, "tokens": tokens, "patches": patches, "coverage_layer": layer}
  return _Program(shape, coverage_forward(layer).lower(model, batch, query), _held({"params": params}, batch))


COSTS = ("unrolled", "extrapolated", "none")

# XLA's cost analysis counts a loop body once. The cost twins therefore run without loops: layers
# unrolled, the LM head in one block, and no windowed einsum (the TPU partitioner's decomposition of
# an all-gather or reduce-scatter and its matmul into a loop over the shards: with it, a 7B step on
# 16 chips counted about half of its FLOPs). What loop is left is counted by `_cost`.
TWIN_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                         "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def _cost_twins(config, cost: str) -> list[tuple[int, Any]]:
  """(text layers, config) of the loop-free compiles that give a program's cost figures.

  "unrolled": one twin at full depth. "extrapolated": two twins with the fewest text layers the
  family allows (k) and one more, for models too deep to compile unrolled: XLA's figures add up
  over instructions, so the whole decoder costs C(k) + (n - k) * (C(k + 1) - C(k)). The FLOPs come
  out exact; the time comes out high (Qwen2.5-VL-7B SFT step on v5p:4x4x4: 605 ms against 468 ms
  unrolled), most likely as a one- or two-layer program has no next layer to hide its parameter
  all-gathers behind. The vision tower stays whole in both."""
  from zwz_jax.models import registry

  def twin(depth: int):
    c = config.copy_and_resolve_references()
    c.model.scan_layers = False
    c.model.text.num_layers = depth
    c.train.lm_head_block = 2**31 - 1  # one block, whatever the length
    return c

  n = int(config.model.text.num_layers)
  if cost == "extrapolated":
    for k in range(1, n - 1):
      shallow = twin(k)
      try:
        registry.model_config(shallow.model)  # e.g. Qwen3-VL: more layers than DeepStack features
      except ValueError:
        continue
      return [(k, shallow), (k + 1, twin(k + 1))]
  return [(n, twin(n))]


def compile_config(config, topology: str, functions: Sequence[str] = ("sft",), cost: str = "unrolled") -> list[Report]:
  """Compiles each function of `config` for `topology`; one Report per program.

  Memory and compile time are the program's own. Its FLOPs and cost-model time come from loop-free
  twins (`_cost_twins`: "unrolled" from one at full depth, "extrapolated" from two shallow ones), as
  XLA's cost analysis counts a loop body once; cost="none": no FLOPs or time.
  """
  from zwz_jax.sharding import make_mesh
  from zwz_jax.train import metrics as metrics_lib
  unknown = [f for f in functions if f not in PROGRAMS]
  if unknown:
    raise ConfigError(f"--functions: {unknown} not among {FUNCTIONS}")
  if cost not in COSTS:
    raise ConfigError(f"--cost={cost!r} is not one of {COSTS}")
  devices = topology_devices(topology)
  mesh = make_mesh(config.mesh, devices=devices)
  kind = devices[0].device_kind
  hbm, peak, chips = hbm_bytes(kind), metrics_lib.peak_flops(devices[0]), len(devices)
  twins = _cost_twins(config, cost) if cost != "none" else []
  n = int(config.model.text.num_layers)
  reports = []
  for function in functions:
    with jax.set_mesh(mesh):
      programs = PROGRAMS[function](config, mesh)
      twin_programs = [PROGRAMS[function](twin, mesh) for _, twin in twins]
    for i, p in enumerate(programs):
      r = Report(function, p.shape, topology, dict(mesh.shape), kind, hbm, held=p.held,
                 model_flops=p.model_flops / chips, peak_flops=peak)
      t0 = time.perf_counter()
      try:
        compiled = p.lowered.compile()
      except Exception as e:  # XLA's RESOURCE_EXHAUSTED (or any compile failure), reported as is
        compiled, r.error = None, str(e)
      r.compile_seconds = time.perf_counter() - t0
      if compiled is not None:
        m = compiled.memory_analysis()
        r.argument, r.output = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
        r.alias, r.temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
        try:
          costs = [twin_cost(t[i], devices[0]) for t in twin_programs]
        except Exception as e:  # pylint: disable=broad-except
          # A twin may not fit where the program does, or hold a loop the figures would miss.
          costs, r.cost_error = [], f"a cost twin did not compile or count: {_short(str(e))}"
        if len(costs) == 1:
          r.flops, r.est_seconds = costs[0]
        elif costs:
          (k, _), ((f0, s0), (f1, s1)) = twins[0], costs
          r.flops, r.est_seconds = f0 + (n - k) * (f1 - f0), s0 + (n - k) * (s1 - s0)
      reports.append(r)
  return reports


def twin_cost(program: _Program, device) -> tuple[float, float]:
  """(FLOPs, cost-model seconds) of a cost twin's program, compiled as the twins are."""
  return _cost(program.lowered.compile(compiler_options=TWIN_COMPILER_OPTIONS), device, program.loop_trips,
               program.counted_loops)


class UncountedLoop(Exception):
  """A compiled cost twin holds a loop whose body XLA's cost analysis would count once."""


_WHILE = re.compile(r"^\s*(?:ROOT )?%[\w.-]+ = .*? while\(.*$", re.M)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def loop_names(hlo_text: str) -> list[str]:
  """The op_name of every while loop in a compiled program's HLO ("" where it has none)."""
  return [m.group(1) if (m := _OP_NAME.search(line)) else "" for line in _WHILE.findall(hlo_text)]


def _cost(compiled, device, loop_trips: int = 1, counted_loops: str = "^$") -> tuple[float, float]:
  """(FLOPs, cost-model seconds) of a compiled twin, its splash kernels included. Train steps: the
  micro-batch scan (`counted_loops`) holds nearly all the work, so both scale by its trips.
  Samplers: the prefill plus one decode step (the decode loop is not scaled). Any other loop
  raises UncountedLoop.
  Seconds are 0 (no estimate) where the cost model gives the program none (absent or negative,
  as for a Qwen3-VL-2B step on v5e): the kernels' time alone would pass for the step's."""
  text = compiled.as_text()
  stray = [name for name in loop_names(text) if not re.search(counted_loops, name)]
  if stray:
    names = sorted(set(stray))
    raise UncountedLoop(f"{len(stray)} loop(s) whose body XLA's cost analysis counts once: {names[:4]}"
                        + (f" and {len(names) - 4} more" if len(names) > 4 else ""))
  cost = _cost_analysis(compiled)
  seconds = float(cost.get("optimal_seconds", -1.0))
  kernel_flops, kernel_seconds = kernel_cost(text, device)
  flops = (float(cost.get("flops", 0.0)) + kernel_flops) * loop_trips
  return flops, (seconds + kernel_seconds) * loop_trips if seconds > 0 else 0.0


def _cost_analysis(compiled) -> dict:
  cost = compiled.cost_analysis() or {}
  return cost[0] if isinstance(cost, (list, tuple)) else cost  # one dict per program in older jax


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%[\w.-]+ = ", re.M)
_SPLASH_OP = re.compile(r'op_name="[^"]*/' + attention.SPLASH_COST_SCOPE + r'_(\d+)_(\d+)/[^"]*splash_m[hq]a_(fwd|dq|dkv)')


def kernel_cost(hlo_text: str, device) -> tuple[float, float]:
  """(FLOPs, seconds) of the splash kernels in a compiled program's HLO, which XLA's cost analysis
  leaves out (a Mosaic kernel that declares no cost). Each kernel's work comes from the scope its
  attention call names (`attention.SPLASH_COST_SCOPE`: forward FLOPs and bytes of the computed
  blocks), scaled by its phase (`attention.SPLASH_PHASES`); its time is what the compiler's cost
  model gives a Mosaic kernel that declares that work (`mosaic_rates`). Loop bodies count once, as
  in XLA's own figures."""
  flops = seconds = 0.0
  starts = [m.start() for m in _INSTRUCTION.finditer(hlo_text)] + [len(hlo_text)]
  for a, b in zip(starts, starts[1:]):
    instruction = hlo_text[a:b]
    if 'custom_call_target="tpu_custom_call"' not in instruction:
      continue
    m = _SPLASH_OP.search(instruction)
    if m is None:
      continue
    rate, bandwidth = mosaic_rates(device)  # probed once per chip kind
    f = int(m.group(1)) * attention.SPLASH_PHASES[m.group(3)]
    flops += f
    seconds += max(f / rate, int(m.group(2)) / bandwidth)
  return flops, seconds


_RATES: dict[str, tuple[float, float]] = {}


def mosaic_rates(device) -> tuple[float, float]:
  """(FLOP/s, bytes/s) at which the compiler's cost model runs a Mosaic kernel that declares its
  cost, measured on two probe kernels (its time is the larger of FLOPs / rate and bytes / bandwidth).
  On v5p: 86% of the bf16 peak; on v5e and v6e: the peak."""
  if device.device_kind not in _RATES:
    from jax.experimental import pallas as pl

    def copy(x_ref, o_ref):
      o_ref[...] = x_ref[...]

    x = jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))

    def seconds(flops: int, nbytes: int) -> float:
      call = pl.pallas_call(copy, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                            cost_estimate=pl.CostEstimate(flops=flops, transcendentals=0, bytes_accessed=nbytes))
      return float(_cost_analysis(jax.jit(call).lower(x).compile())["optimal_seconds"])

    probe = 10**12
    _RATES[device.device_kind] = (probe / seconds(probe, 1), probe / seconds(1, probe))
  return _RATES[device.device_kind]


def format_table(reports: Sequence[Report]) -> str:
  """Markdown table, one row per program, sizes per chip."""
  lines = ["| function | rows x tokens x patches | mesh | params | opt state | batch | temporaries | total / HBM "
           "| TFLOP per chip | est. time | MFU | compile |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    mesh = "x".join(f"{k}{v}" for k, v in r.mesh.items() if v > 1) or "1"
    shape = f"{r.shape['rows']} x {r.shape['tokens']} x {r.shape['patches']}"
    if "new_tokens" in r.shape:
      shape += f" (+{r.shape['new_tokens']} new)"
    if r.shape.get("log_probs"):
      shape += " (log-probs)"
    if "coverage_layer" in r.shape:
      shape += f" (coverage, layer {r.shape['coverage_layer']})"
    cells = [r.function, shape, mesh] + [_bytes(r.held.get(k, 0)) for k in ("params", "opt_state", "batch")]
    if r.error:
      cells += [f"does not fit: {_short(r.error)}", "", "", "", ""]
    else:
      over = "" if r.fits else " (over)"
      cells += [_bytes(r.temp), f"{_bytes(r.total)} / {_bytes(r.hbm)}{over}",
                f"{(r.model_flops or r.flops) / 1e12:.2f}",
                f"{r.est_seconds * 1e3:.0f} ms" if r.est_seconds else "-",
                f"{r.mfu:.1%}" if np.isfinite(r.mfu) else "-"]
    lines.append("| " + " | ".join(cells + [f"{r.compile_seconds:.0f} s"]) + " |")
  return "\n".join(lines)


def _bytes(b: float) -> str:
  return f"{b / GiB:.2f} GiB" if b >= 0.1 * GiB else f"{b / 1024**2:.1f} MiB"


def _short(message: str) -> str:
  first = next((l for l in message.splitlines() if "RESOURCE_EXHAUSTED" in l), message.splitlines()[0] if message else "")
  return first.strip().replace("|", "/")[:300]
