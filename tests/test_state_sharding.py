"""The optimizer state is sharded like the parameters it stands for (not replicated on every chip),
for SFT and GRPO, with frozen modules, and old checkpoints with a replicated state still restore."""
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from tests.shared import CONFIGS
from zwz_jax.config import load_config
from zwz_jax.sharding import make_mesh
from zwz_jax.train import checkpoint as ckpt_lib
from zwz_jax.train import loop, optim
from zwz_jax.train.trainer import Trainer

MESHES = [(1, 8, 1), (1, 4, 2)]


def _mesh(data, fsdp, tensor):
  return make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, devices=jax.devices()[:data * fsdp * tensor])


def _replicated_share(tree) -> float:
  leaves = jax.tree.leaves(tree)
  total = sum(int(np.prod(a.shape)) for a in leaves)
  repl = sum(int(np.prod(a.shape)) for a in leaves if a.sharding.is_fully_replicated)
  return repl / total


def _check_state(trainer):
  abs_state = trainer.abstract_state
  params, opt = abs_state["params"], abs_state["opt_state"]
  assert _replicated_share(opt) <= 0.02
  # Each Adam moment of a parameter has exactly that parameter's sharding.
  seen = 0
  for moment in ("mu", "nu"):
    for tree in optax.tree_utils.tree_get_all_with_path(opt, moment):
      for key, leaf in tree[1].items():
        if isinstance(leaf, jax.ShapeDtypeStruct):
          assert leaf.shape == params[key].shape
          assert leaf.sharding == params[key].sharding, (key, leaf.sharding, params[key].sharding)
          seen += 1
  return seen


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sft_optimizer_state_sharded_like_params(mesh):
  trainer = Trainer(load_config(f"{CONFIGS}/tiny.py"), _mesh(*mesh))
  assert _check_state(trainer) == 2 * len(trainer.space.abstract)  # mu and nu of every parameter
  # The sharding actually produced by init and by the train step's output is the declared one.
  state = trainer.init_state()
  for leaf, want in zip(jax.tree.leaves(state["opt_state"]), jax.tree.leaves(trainer.state_shardings["opt_state"])):
    assert leaf.sharding == want


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_grpo_optimizer_state_sharded_like_params(mesh):
  trainer = loop.build(load_config(f"{CONFIGS}/tiny_grpo.py"), _mesh(*mesh))
  assert _check_state(trainer) == 2 * len(trainer.space.abstract)


def test_frozen_vision_tower_has_no_state_and_the_rest_is_sharded():
  trainer = Trainer(load_config(f"{CONFIGS}/tiny.py", ["train.lr_scale.vision=0"]), _mesh(1, 8, 1))
  trainable = [k for k in trainer.space.abstract if optim.module_of(k) != "vision"]
  assert _check_state(trainer) == 2 * len(trainable)


def test_checkpoint_with_replicated_optimizer_state_restores_sharded(tmp_path):
  """Checkpoints written before the state was sharded hold replicated moments: they restore into
  the sharded layout with the same values."""
  config = load_config(f"{CONFIGS}/tiny.py")
  mesh = _mesh(1, 8, 1)
  trainer = Trainer(config, mesh)
  state = trainer.init_state()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Moments with distinct values, so a misplaced shard shows.
  mu = jax.tree.map(lambda x: x + jax.numpy.arange(x.size, dtype=x.dtype).reshape(x.shape) * 1e-3
                    if x.dtype == np.float32 else x, state["opt_state"])
  old = {**state, "opt_state": jax.device_put(mu, replicated)}
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(old), meta=ocp.args.JsonSave({})),
                    force=True)
  ckpt.wait()
  restored, _ = ckpt.restore(1, trainer.abstract_state)
  ckpt.close()
  for got, want, sharding in zip(jax.tree.leaves(restored["opt_state"]), jax.tree.leaves(mu),
                                 jax.tree.leaves(trainer.state_shardings["opt_state"])):
    assert got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
