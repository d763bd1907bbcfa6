"""Ahead-of-time compilation for TPU topologies on CPU (libtpu's compile-only client): every
function compiles for a small slice, the figures agree with the shardings, and a program that
cannot fit or a topology that does not exist fails clearly."""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.shared import CONFIGS, LAUNCH
from zwz_jax import aot
from zwz_jax.config import load_config
from zwz_jax.models import registry
from zwz_jax.params import ParamSpace


@pytest.fixture(autouse=True)
def _default_precision():
  """Compile at the default matmul precision, as the real configs run: the suite's "highest"
  (for the parity tests) makes the TPU compiler split every matmul into bf16 passes and take
  four times as long."""
  import jax
  with jax.default_matmul_precision("default"):
    yield


# One bucket and short rollouts keep the compiles quick; the programs are the real ones.
SMALL = ["data.buckets=((224, 256),)", "grpo.num_generations=4", "grpo.max_new_tokens=4", "grpo.num_minibatches=2"]


def _space(config, chips: int = 4) -> ParamSpace:
  """The parameters laid out on CPU devices in the config's mesh shape over `chips` devices."""
  import jax
  from zwz_jax.sharding import make_mesh
  return ParamSpace(registry.model_config(config.model), make_mesh(config.mesh, devices=jax.devices()[:chips]))


def _param_bytes_per_chip(config) -> float:
  """fp32 parameter bytes per chip from the logical-axis rules alone: each parameter's size over the
  product of the mesh axes its spec names."""
  space = _space(config)
  mesh_shape = next(iter(space.abstract.values())).sharding.mesh.shape
  total = 0.0
  for a in space.abstract.values():
    axes = [x for part in a.sharding.spec if part for x in ((part,) if isinstance(part, str) else part)]
    total += 4 * math.prod(a.shape) / math.prod(mesh_shape[x] for x in axes)
  return total


def _check_figures(config, reports, costed: bool):
  expected = _param_bytes_per_chip(config)
  for r in reports:
    assert r.fits and not r.error, r.error
    assert r.device_kind == "TPU v5 lite" and r.hbm == aot.HBM_BYTES["TPU v5 lite"]
    # The tiny decode loops may need no temporaries at all (everything lives in their outputs).
    assert r.output > 0
    if costed:
      assert not r.cost_error and r.flops > 0 and r.est_seconds > 0 and 0 < r.mfu < 1, r.cost_error
    assert r.held["params"] == pytest.approx(expected, rel=0.05)
    # The compiler holds at least what the shardings say (TPU tiles pad small arrays).
    assert r.argument >= sum(r.held.values())
    if r.function in ("sft", "grpo_update"):
      assert r.temp > 0  # activations
      # Both Adam moments, sharded like the parameters (replicated, they would be 8 * n per chip).
      assert r.held["opt_state"] == pytest.approx(2 * expected, rel=0.05)
      # The donated state comes back in place: the outputs alias at least the state's bytes.
      assert r.alias >= r.held["params"] + r.held["opt_state"]
      # The compiled step does the model's matmuls (and little else) per chip.
      if costed:
        assert 0.8 < r.flops / r.model_flops < 2.0, (r.flops, r.model_flops)
    else:
      assert r.held["opt_state"] == 0


@pytest.mark.parametrize("config_path,mesh", [
    # One decoder layer and one window + one full-attention vision block, unrolled: a shorter compile.
    # The eval program samples as the authors' protocol does (a key per prompt, top-k, penalty), and
    # reads coverage: its forward is compiled too.
    (f"{CONFIGS}/eval_paper_tiny.py", ("mesh.fsdp=2", "mesh.tensor=2", "model.text.num_layers=1",
                                    "model.vision.depth=2", "model.vision.fullatt_block_indexes=(1,)",
                                    "eval.coverage_layer=0")),
    # Two micro-batches and scanned layers (cost figures: test_extrapolated_cost_*, test_cost_figures_*).
    (f"{CONFIGS}/tiny_qwen3.py", ("mesh.fsdp=-1", "train.grad_accum_steps=2", "model.scan_layers=True")),
], ids=["qwen2_5_vl-fsdp2-tensor2", "qwen3_vl-fsdp4"])
def test_every_function_compiles_for_a_v5e_slice(config_path, mesh):
  config = load_config(config_path, SMALL + list(mesh))
  # The unrolled case is costed too (its twins: the same depth, loop-free); the scanned one's cost
  # figures: test_extrapolated_cost_*.
  costed = not registry.model_config(config.model).scan_layers
  reports = aot.compile_config(config, "v5e:2x2", aot.FUNCTIONS, cost="unrolled" if costed else "none")
  coverage = int(config.eval.coverage_layer) >= 0
  assert [r.function for r in reports] == ["sft", "grpo_update", "rollout", "rollout", "eval"] + ["eval"] * coverage
  _check_figures(config, reports, costed)
  if reports[0].mesh["fsdp"] == 4:
    # fsdp over all 4 chips: nearly every parameter byte is split 4 ways (norms may be replicated).
    n = sum(math.prod(a.shape) for a in _space(config).abstract.values())
    assert reports[0].held["params"] == pytest.approx(4 * n / 4, rel=0.05)
  sft, grpo, rollout, logprobs, evaluation = reports[:5]
  assert sft.shape == {"rows": 8, "tokens": 224, "patches": 256}
  assert grpo.shape == {"rows": 8 * 4 // 2, "tokens": 224 + 4, "patches": 256}
  # GRPO's objective, though these configs train SFT: its update takes the rollout keys.
  import jax
  import jax.numpy as jnp
  from zwz_jax.sharding import make_mesh
  from zwz_jax.train.grpo import ClippedObjective
  shapes = aot.batch_shapes(config, 16, 228, 256)
  per_token = lambda dtype: jax.ShapeDtypeStruct((16, 4), dtype)
  shapes.update(response=per_token(jnp.int32), response_mask=per_token(jnp.bool_), old_logp=per_token(jnp.float32),
                ref_logp=per_token(jnp.float32), advantages=jax.ShapeDtypeStruct((16,), jnp.float32))
  mesh = make_mesh(reports[0].mesh, devices=aot.topology_devices("v5e:2x2"))
  placed = aot.place_batch(mesh, {k: shapes[k] for k in ClippedObjective(config).batch_keys})
  assert grpo.held["batch"] == aot.per_chip_bytes(placed)
  assert rollout.shape == {"rows": 8 * 4, "tokens": 224, "patches": 256, "new_tokens": 4}
  assert logprobs.shape == {"rows": 8 * 4, "tokens": 224 + 4, "patches": 256, "log_probs": True}
  assert evaluation.shape["rows"] == config.eval.batch_size
  assert evaluation.shape["new_tokens"] == config.eval.max_new_tokens
  if coverage:
    assert reports[5].shape == {"rows": evaluation.shape["rows"], "tokens": evaluation.shape["tokens"],
                                "patches": evaluation.shape["patches"], "coverage_layer": 0}


def test_cost_twins_start_at_the_shallowest_depth_the_family_allows():
  """Qwen3-VL adds each DeepStack feature to one early decoder layer, so its twins need more text
  layers than features (tiny_qwen3: 2 features, twins of 3 and 4 layers)."""
  for path, twins in [(f"{CONFIGS}/tiny.py", [1, 2]), (f"{CONFIGS}/tiny_qwen3.py", [3, 4])]:
    config = load_config(path, ["model.text.num_layers=8"])
    assert [d for d, _ in aot._cost_twins(config, "extrapolated")] == twins, path
  assert [d for d, _ in aot._cost_twins(config, "unrolled")] == [8]


# Each family one text layer deeper than its twins: the extrapolation reaches a layer neither twin
# has. Qwen3-VL with one DeepStack feature (into layer 0), so its twins can be 2 and 3 layers deep.
@pytest.mark.parametrize("config_path,overrides,twins", [
    (f"{CONFIGS}/tiny.py", [], [1, 2]),
    (f"{CONFIGS}/tiny_qwen3.py", ["model.vision.deepstack_visual_indexes=(1,)"], [2, 3]),
], ids=["qwen2_5_vl", "qwen3_vl"])
def test_extrapolated_cost_equals_the_unrolled_compile(config_path, overrides, twins):
  """A scanned step with two micro-batches: two shallow unrolled compiles, extrapolated over the
  text depth, give the FLOPs of the whole unrolled step exactly (XLA's figures add up over
  instructions) and, at this size, its cost-model time closely (at 7B size the time comes out high:
  see aot._cost_twins); both cover every layer and micro-batch (XLA counts a loop body once)."""
  config = load_config(config_path, SMALL + overrides + [
      f"model.text.num_layers={twins[1] + 1}", "mesh.fsdp=-1", "train.grad_accum_steps=2", "model.scan_layers=True"])
  import jax
  from zwz_jax.sharding import make_mesh
  assert [d for d, _ in aot._cost_twins(config, "extrapolated")] == twins
  (_, unrolled), = aot._cost_twins(config, "unrolled")
  devices = aot.topology_devices("v5e:2x2")
  with jax.set_mesh(mesh := make_mesh(config.mesh, devices=devices)):
    full, = aot.PROGRAMS["sft"](unrolled, mesh)
  flops, seconds = aot.twin_cost(full, devices[0])
  extrapolated, = aot.compile_config(config, "v5e:2x2", ("sft",), cost="extrapolated")
  assert seconds > 0 and 1.0 < flops / extrapolated.model_flops < 1.3, (flops, extrapolated.model_flops)
  assert extrapolated.flops == pytest.approx(flops, rel=1e-5)
  assert extrapolated.est_seconds == pytest.approx(seconds, rel=0.05)


def test_cost_figures_count_no_loop_body_once():
  """XLA's cost analysis counts a loop body once, so a loop hides work from the figures: the LM
  head's blockwise loop, or the TPU partitioner's windowed einsums (an all-gather or reduce-scatter
  and its matmul as a loop over the shards: a 7B step on 16 v5p chips counted half its FLOPs).
  `_cost` refuses a program holding a loop it does not multiply out; the cost twin holds none but
  the micro-batch scan, and does at least the model's matmuls."""
  import jax
  from zwz_jax.sharding import make_mesh
  config = load_config(f"{CONFIGS}/tiny.py", SMALL + ["train.lm_head_block=32", "train.grad_accum_steps=2",
                                                   "mesh.fsdp=-1", "model.text.num_layers=1", "model.vision.depth=2",
                                                   "model.vision.fullatt_block_indexes=(1,)"])
  devices = aot.topology_devices("v5e:2x2")
  mesh = make_mesh(config.mesh, devices=devices)
  (_, twin_config), = aot._cost_twins(config, "unrolled")
  with jax.set_mesh(mesh):
    program, = aot.PROGRAMS["sft"](config, mesh)
    twin, = aot.PROGRAMS["sft"](twin_config, mesh)
  compiled = program.lowered.compile()
  step = "jit(_update_fn)/while"
  assert set(aot.loop_names(compiled.as_text())) == {step, f"{step}/body/closed_call/jvp()/while",
                                                     f"{step}/body/closed_call/transpose(jvp())/while"}
  with pytest.raises(aot.UncountedLoop, match=r"^2 loop\(s\) .*jvp\(\)/while"):
    aot._cost(compiled, devices[0], program.loop_trips, program.counted_loops)
  flops, seconds = aot.twin_cost(twin, devices[0])
  assert seconds > 0 and 1.0 < flops * len(devices) / program.model_flops < 1.3, (flops, program.model_flops)


def test_sequence_parallelism_splits_what_remat_keeps_over_tensor():
  """Between layers the residual stream is split over `tensor` along its length, so the layer inputs
  full remat keeps for the backward take half the bytes on a tensor=2 mesh: the SFT step's
  temporaries fall by most of that half against the same step with the residual's length whole
  (and do not grow: left to itself, XLA split the attention's backward by position as well and
  moved its scores between ranks, 4x the temporaries)."""
  from unittest import mock
  from zwz_jax import sharding
  layers, tokens, hidden = 8, 1024, 128
  config = load_config(f"{CONFIGS}/tiny.py", [f"data.buckets=(({tokens}, 256),)", "mesh.fsdp=2", "mesh.tensor=2",
                                              "model.remat=full", f"model.text.num_layers={layers}", "model.scan_layers=True"])
  rows = config.data.global_batch_size // 2  # per fsdp rank; each rank of a tensor pair holds them all
  kept = layers * rows * tokens * hidden * 4  # float32 layer inputs of the decoder
  split, = aot.compile_config(config, "v5e:2x2", ("sft",), cost="none")
  with mock.patch.dict(sharding._RULES, {"act_residual_length": None}):
    whole, = aot.compile_config(config, "v5e:2x2", ("sft",), cost="none")
  assert whole.temp - split.temp >= 0.8 * kept / 2, (whole.temp, split.temp, kept)


def _compile_cli(*args):
  cmd = [sys.executable, f"{LAUNCH}/compile.py", *args]
  return subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_a_program_that_cannot_fit_exits_nonzero_naming_function_bucket_and_bytes():
  # 8 examples of 65,536 patches on one v5e chip with dense attention: the vision tower's
  # full-attention scores alone need far more than its 16 GiB (splash, the TPU default, fits).
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v5e:1x1", "--config.mesh.fsdp=1",
                     "--config.data.buckets=((512, 65536),)", "--config.model.attention=dense", "--json")
  assert out.returncode == 1, out.stderr[-2000:]
  rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  assert [(r["function"], r["shape"]["patches"], r["fits"]) for r in rows] == [("sft", 65536, False)]
  assert "RESOURCE_EXHAUSTED" in rows[0]["error"]
  assert "sft (rows=8 x tokens=512 x patches=65536) does not fit v5e:1x1" in out.stderr
  assert "exceeds available HBM" in out.stderr


def test_unknown_topology_and_function_are_clear_errors():
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v9z:2x2")
  assert out.returncode == 2 and "--topology='v9z:2x2'" in out.stderr and "v5p:4x4x4" in out.stderr
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v5e:3x7")
  assert out.returncode == 2 and "is not a TPU topology the compiler knows" in out.stderr, out.stderr[-2000:]
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v5e:2x2", "--functions=sft,nope")
  assert out.returncode == 2 and "'nope'" in out.stderr
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v5e:2x2", "--functions=eval")
  assert out.returncode == 2 and "config key eval" in out.stderr
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v5e:2x2", "--config.mesh.fsdpp=2")
  assert out.returncode == 2 and "fsdpp" in out.stderr


def test_mesh_that_does_not_match_the_slice_names_both():
  out = _compile_cli(f"--config={CONFIGS}/tiny.py", "--topology=v5e:2x2", "--config.mesh.fsdp=8")
  assert out.returncode == 2 and "needs 8 devices, have 4" in out.stderr, out.stderr[-2000:]


def test_auto_attention_lowers_to_splash_on_a_tpu_mesh():
  """On a TPU mesh `auto` attention at a long length is the splash kernel (a Mosaic custom call),
  split over the batch and KV-head axes, and its forward + backward hold no (T x S) scores."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from zwz_jax.models import attention as attention_lib
  from zwz_jax.sharding import make_mesh

  mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=aot.topology_devices("v5e:2x2"))
  b, t, hkv, g, d = 2, 8192, 2, 4, 128
  spec = lambda shape, p: jax.ShapeDtypeStruct(shape, jnp.bfloat16 if len(shape) > 2 else jnp.int32,
                                               sharding=NamedSharding(mesh, p))
  q = spec((b, t, hkv, g, d), P("fsdp", None, "tensor"))
  kv = spec((b, t, hkv, d), P("fsdp", None, "tensor"))
  seg = spec((b, t), P("fsdp"))

  def loss(q, k, v, seg):
    out = attention_lib.attend(q, k, v, seg, seg, causal=True)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  # bfloat16 at the default precision, as the real configs run (conftest asks for "highest").
  with jax.set_mesh(mesh), jax.default_matmul_precision("default"):
    assert attention_lib.resolve("auto", t, t) == "splash"
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
  assert "tpu_custom_call" in compiled.as_text()
  scores_per_chip = (b // 2) * (hkv // 2) * g * t * t * 4  # float32 (T x S) of the local heads
  assert compiled.memory_analysis().temp_size_in_bytes < scores_per_chip / 20


def test_splash_with_a_batch_that_does_not_divide_the_mesh_compiles():
  """Rows replicated over the mesh (fewer than the batch axes) still compile: the splash kernel
  (which XLA cannot partition itself) runs inside shard_map, whole on every device."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from zwz_jax.models import attention as attention_lib
  from zwz_jax.sharding import make_mesh

  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 1}, devices=aot.topology_devices("v5e:2x2"))
  b, t, hkv, g, d = 2, 4096, 2, 2, 128  # 2 rows over fsdp=4
  spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16 if len(shape) > 2 else jnp.int32,
                                            sharding=NamedSharding(mesh, P()))
  attend = lambda q, k, v, seg: attention_lib.attend(q, k, v, seg, seg, backend="splash")
  with jax.set_mesh(mesh):
    compiled = jax.jit(attend).lower(spec((b, t, hkv, g, d)), spec((b, t, hkv, d)), spec((b, t, hkv, d)),
                                     spec((b, t))).compile()
  assert "tpu_custom_call" in compiled.as_text()


def test_splash_kernels_are_costed_like_the_attention_they_replace():
  """XLA's cost analysis does not see inside a Mosaic kernel: the compile tool adds the splash
  kernels' work from the scope each attention call names. Forward, the kernels' FLOPs equal what XLA
  counts for the dense einsums at a full mask; forward + backward, 1.5x (the kernels recompute the
  scores in both backward passes: 9 matmuls per block against dense's 6); a causal mask counts its
  visible blocks only. Each kernel's time is what the compiler's cost model gives a Mosaic kernel
  that declares the same work."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from zwz_jax.models import attention as attention_lib
  from zwz_jax.sharding import make_mesh
  from zwz_jax.train import metrics

  devices = aot.topology_devices("v5e:2x2")
  mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=devices)
  b, t, hkv, g, d, block = 2, 1024, 2, 2, 128, 512
  spec = lambda shape, p: jax.ShapeDtypeStruct(shape, jnp.bfloat16 if len(shape) > 2 else jnp.int32,
                                               sharding=NamedSharding(mesh, p))
  args = (spec((b, t, hkv, g, d), P("fsdp", None, "tensor")), spec((b, t, hkv, d), P("fsdp", None, "tensor")),
          spec((b, t, hkv, d), P("fsdp", None, "tensor")), spec((b, t), P("fsdp")))

  def cost(backend, causal=False, grad=False):
    def loss(q, k, v, seg):
      out = attention_lib.attend(q, k, v, seg, seg, causal=causal, backend=backend, block=block)
      return jnp.sum(out.astype(jnp.float32) ** 2)
    f = jax.grad(loss, argnums=(0, 1, 2)) if grad else loss
    with jax.set_mesh(mesh):
      compiled = jax.jit(f).lower(*args).compile()
    return aot.kernel_cost(compiled.as_text(), devices[0]), aot._cost(compiled, devices[0])

  per_chip = 4 * (b // 2) * (hkv // 2) * g * t * t * d  # QK^T and PV of the local heads, full mask
  (fwd_kernel, fwd_seconds), (fwd_total, _) = cost("splash")
  assert fwd_kernel == per_chip
  rate, bandwidth = aot.mosaic_rates(devices[0])
  assert 0.5 * metrics.peak_flops(devices[0]) < rate <= 1.01 * metrics.peak_flops(devices[0])
  nbytes = 2 * (b // 2) * (hkv // 2) * g * d * (2 * t + 2 * 4 * block)  # Q, O once; K, V tiles per block
  assert fwd_seconds == pytest.approx(max(per_chip / rate, nbytes / bandwidth))
  dense_total = cost("dense")[1][0]
  assert fwd_total == pytest.approx(dense_total, rel=0.03)

  (grad_kernel, _), (grad_total, _) = cost("splash", grad=True)
  assert grad_kernel == 4.5 * per_chip  # forward 1 + dq 1.5 + dkv 2
  assert grad_total == pytest.approx(1.5 * cost("dense", grad=True)[1][0], rel=0.03)

  (causal_kernel, _), _ = cost("splash", causal=True, grad=True)
  assert causal_kernel == 4.5 * per_chip * 3 / 4  # 3 of the 2 x 2 blocks hold a visible pair


def test_a_program_the_cost_model_gives_no_time_has_none():
  """XLA's cost model gives some TPU programs no time: a negative optimal_seconds (a Qwen3-VL-2B
  step on v5e:2x2: -1478). The splash kernels' time alone would then read as the step's (there,
  an MFU of 206%), so such a program has no time; its FLOPs still count the kernels."""
  device = aot.topology_devices("v5e:2x2")[0]
  kernel = ('%custom-call.7 = bf16[1,512,128]{2,1,0} custom-call(%p0, %p1, %p2), custom_call_target="tpu_custom_call", '
            'metadata={op_name="jit(step)/splash_cost_1000000_4096/shard_map/splash_mha_fwd_no_residuals"}\n')

  class Compiled:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      return self.cost

    def as_text(self):
      return kernel

  flops, seconds = aot.kernel_cost(kernel, device)
  assert flops == 1e6 and seconds > 0
  assert aot._cost(Compiled({"flops": 10.0, "optimal_seconds": 2e-3}), device, 4) == (
      4 * (10.0 + flops), pytest.approx(4 * (2e-3 + seconds)))
  assert aot._cost(Compiled({"flops": 10.0, "optimal_seconds": -1477.7}), device, 4) == (4 * (10.0 + flops), 0.0)
  assert aot._cost(Compiled({"flops": 10.0}), device, 4) == (4 * (10.0 + flops), 0.0)
  # --json reports such a program's MFU as null (json.dumps would write NaN, which is not JSON).
  untimed = aot.Report("sft", {}, "v5e:2x2", {}, device.device_kind, 16e9, flops=1e12, peak_flops=197e12)
  assert json.loads(json.dumps(untimed.to_dict(), allow_nan=False))["mfu"] is None


def test_a_mesh_axis_the_slice_has_no_physical_axis_for_splits_one():
  """tensor=2 on v6e:8x16: no product of the physical axes (8, 16) is 2, which jax.make_mesh
  refuses; the mesh splits a physical axis instead, so the two tensor shards are neighbours."""
  from zwz_jax.sharding import make_mesh
  devices = aot.topology_devices("v6e:8x16")
  mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 2}, devices=devices)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 64, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
  for a, b in mesh.devices.reshape(-1, 2):  # a tensor pair: one hop apart
    assert sum(abs(x - y) for x, y in zip(a.coords, b.coords)) == 1
