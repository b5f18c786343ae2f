import jax
import numpy as np
import pytest

from data import loader
from lm import checkpoint as checkpoint_lib
from lm import sharding
from lm import train


def _assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_and_data_position(tiny_config, train_iterator, tmp_path):
  config = tiny_config
  config.mesh.fsdp, config.mesh.tensor = 2, 2
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  for _ in range(3):
    state, _ = trainer.train_step(state, sharding.global_batch(next(it), trainer.batch_sharding))

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=2)
  assert checkpointer.save(3, state, it, force=True)
  checkpointer.wait()
  saved = jax.device_get(state)  # host copy: train_step donates the device state
  next_batch = next(it)
  continued, _ = trainer.train_step(state, sharding.global_batch(next_batch, trainer.batch_sharding))
  continued = jax.device_get(continued)

  # A fresh process: new checkpointer, new iterator at its start.
  fresh_it = train_iterator(config)
  reopened = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=2)
  assert reopened.latest_step() == 3
  restored = reopened.restore(3, trainer.abstract_state, fresh_it)
  assert int(restored.step) == 3
  _assert_trees_equal(restored.params, saved.params)
  _assert_trees_equal(restored.opt_state, saved.opt_state)
  _assert_trees_equal(restored.rng, saved.rng)
  assert restored.params["blocks"]["layer_0"]["mlp"]["up"].sharding == trainer.state_shardings.params["blocks"]["layer_0"]["mlp"]["up"]

  batch_after_restore = next(fresh_it)
  for key in loader.BATCH_KEYS:
    np.testing.assert_array_equal(batch_after_restore[key], next_batch[key])
  resumed, _ = trainer.train_step(restored, sharding.global_batch(batch_after_restore, trainer.batch_sharding))
  _assert_trees_equal(jax.device_get(resumed).params, continued.params)
  reopened.close()
  checkpointer.close()


def test_keeps_only_the_last_k(tiny_config, train_iterator, tmp_path):
  config = tiny_config
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=2, max_to_keep=2)
  saved = [step for step in range(1, 8) if checkpointer.save(step, state, it)]
  checkpointer.wait()
  assert saved == [2, 4, 6]
  assert checkpointer.manager.all_steps() == [4, 6]
  checkpointer.close()


def test_checkpoint_written_on_one_mesh_restores_on_another(tiny_config, train_iterator, tmp_path):
  """Saved on data x fsdp x tensor = 8x1x1, restored on 2x2x2 (training continues with the same loss) and on 4
  devices."""
  config = tiny_config

  def trainer_on(data, fsdp, tensor):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
    return train.build(config, sharding.make_mesh(config.mesh))

  wide = trainer_on(8, 1, 1)
  it = train_iterator(config)
  state = wide.init_state(jax.random.PRNGKey(0))
  for _ in range(2):
    state, _ = wide.train_step(state, sharding.global_batch(next(it), wide.batch_sharding))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=2)
  checkpointer.save(2, state, it, force=True)
  checkpointer.wait()
  saved = jax.device_get(state)
  losses = []
  for _ in range(2):
    state, metrics = wide.train_step(state, sharding.global_batch(next(it), wide.batch_sharding))
    losses.append(float(metrics["train/loss"]))

  cube = trainer_on(2, 2, 2)
  fresh_it = train_iterator(config)
  restored = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=2).restore(
      2, cube.abstract_state, fresh_it)
  _assert_trees_equal(restored.params, saved.params)
  _assert_trees_equal(restored.opt_state, saved.opt_state)
  query = restored.params["blocks"]["layer_0"]["attention"]["query"]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert query.addressable_shards[0].data.shape == (2, 32, 2, 16)
  for loss in losses:
    restored, metrics = cube.train_step(restored, sharding.global_batch(next(fresh_it), cube.batch_sharding))
    assert float(metrics["train/loss"]) == pytest.approx(loss, rel=1e-5)

  # And on half the devices (data x fsdp = 2 x 2 over 4 devices).
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
  half = train.build(config, sharding.make_mesh(config.mesh, jax.devices()[:4]))
  smaller = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=2).restore(
      2, half.abstract_state, train_iterator(config))
  _assert_trees_equal(smaller.params, saved.params)
  assert len(smaller.params["embed"]["embedding"].sharding.device_set) == 4
  checkpointer.close()
