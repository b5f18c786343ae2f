import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data import loader
from lm import checkpoint as checkpoint_lib
from lm import sharding
from lm import train
from tests.conftest import REPO


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


def test_retention_keeps_the_last_k_and_every_mth(tiny_config, train_iterator, tmp_path):
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

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "every"), every_steps=2, max_to_keep=2, keep_every_steps=6)
  for step in range(1, 15):
    checkpointer.save(step, state, it)
  checkpointer.wait()
  assert checkpointer.all_steps() == [6, 12, 14]
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


def _saved_checkpoints(config, train_iterator, directory, steps, **options):
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  checkpointer = checkpoint_lib.Checkpointer(str(directory), every_steps=1, max_to_keep=5, **options)
  saved = {}
  for step in range(1, max(steps) + 1):
    state, _ = trainer.train_step(state, sharding.global_batch(next(it), trainer.batch_sharding))
    if step in steps:
      checkpointer.save(step, state, it)
      saved[step] = jax.device_get(state)
  checkpointer.close()
  return trainer, saved


def test_integrity_record_catches_truncated_and_altered_files_and_the_previous_checkpoint_is_used(
    tiny_config, train_iterator, tmp_path):
  trainer, saved = _saved_checkpoints(tiny_config, train_iterator, tmp_path / "ckpt", steps=(1, 2, 3))
  for step in (1, 2, 3):
    assert (tmp_path / "ckpt" / str(step) / checkpoint_lib.INTEGRITY).exists()
    assert checkpoint_lib.verify_integrity(str(tmp_path / "ckpt" / str(step))) is None

  def largest_file(step):
    files = [p for p in (tmp_path / "ckpt" / str(step)).rglob("*") if p.is_file() and p.name != "integrity.json"]
    return max(files, key=lambda p: p.stat().st_size)

  torn = largest_file(3)  # a write cut short: the file holds only its first half
  torn.write_bytes(torn.read_bytes()[:torn.stat().st_size // 2])
  flipped = largest_file(2)  # same size, one byte altered
  data = bytearray(flipped.read_bytes())
  data[len(data) // 2] ^= 0xFF
  flipped.write_bytes(bytes(data))
  assert "bytes" in checkpoint_lib.verify_integrity(str(tmp_path / "ckpt" / "3"))
  assert "sha256" in checkpoint_lib.verify_integrity(str(tmp_path / "ckpt" / "2"))

  messages = []
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=5)
  step, state = checkpointer.restore_latest(trainer.abstract_state, train_iterator(tiny_config), messages.append)
  assert step == 1
  _assert_trees_equal(state.params, saved[1].params)
  assert len(messages) == 2 and "checkpoint" in messages[0] and "/3 is corrupt or incomplete" in messages[0]
  assert "has" in messages[0] and "bytes" in messages[0] and "sha256" in messages[1]
  assert checkpointer.all_steps() == [1]  # the corrupt ones moved aside, their steps free to be saved again
  assert len(list((tmp_path / checkpoint_lib.CORRUPT_DIR).iterdir())) == 2
  checkpointer.close()


def test_a_checkpoint_without_a_record_that_orbax_cannot_read_is_skipped(tiny_config, train_iterator, tmp_path):
  trainer, saved = _saved_checkpoints(tiny_config, train_iterator, tmp_path / "ckpt", steps=(1, 2))
  step_dir = tmp_path / "ckpt" / "2"
  (step_dir / checkpoint_lib.INTEGRITY).unlink()  # killed between orbax's commit and the record
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and "manifest" in path.name:
      path.write_bytes(b"")
  messages = []
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=5)
  step, state = checkpointer.restore_latest(trainer.abstract_state, train_iterator(tiny_config), messages.append)
  assert step == 1 and "/2 is unreadable: orbax could not read it" in messages[0]
  assert checkpointer.all_steps() == [1, 2]  # left in place: the cause may pass
  _assert_trees_equal(state.params, saved[1].params)
  checkpointer.close()


def test_checkpoint_of_another_model_is_rejected_with_the_mismatched_names(tiny_config, train_iterator, tmp_path):
  _saved_checkpoints(tiny_config, train_iterator, tmp_path / "ckpt", steps=(1,))
  tiny_config.model.d_model, tiny_config.model.num_layers = 32, 4
  other = train.build(tiny_config, sharding.make_mesh(tiny_config.mesh))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, max_to_keep=5)
  with pytest.raises(checkpoint_lib.CheckpointError) as error:
    checkpointer.restore_latest(other.abstract_state, train_iterator(tiny_config), print)
  message = str(error.value)
  assert "holds another model's state" in message
  assert "params/embed/embedding: shape (512, 64) in the checkpoint, (512, 32) in this model" in message
  assert "params/blocks/layer_0/mlp/up: shape (2, 64, 128) in the checkpoint, (4, 32, 128) in this model" in message
  assert checkpointer.all_steps() == [1]  # not mistaken for corruption
  checkpointer.close()


def _launch_command(run_dir, tokens_dir, *overrides):
  return [sys.executable, "-m", "lm.launch", "--config", "configs/tiny.py", f"--config.train.run_dir={run_dir}",
          f"--config.data.tokens_dir={tokens_dir}", "--config.log.every_steps=1", "--config.eval.sample_tokens=2",
          "--config.log.noise_scale_every_steps=0", *overrides]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")


def _run_until(command, step, signum, delay=0.0):
  """Starts `command`, sends `signum` once it reports training step >= `step` (after `delay` s); returns its output."""
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    match = re.match(r"step +(\d+)/", line)
    if match and int(match.group(1)) >= step:
      time.sleep(delay)
      process.send_signal(signum)
      break
  lines.extend(process.stdout)
  process.wait(timeout=300)
  return process.returncode, "".join(lines)


def _final_state(config, run_dir, step):
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  checkpointer = checkpoint_lib.Checkpointer(str(run_dir / "checkpoints"), every_steps=1, max_to_keep=5)
  state, _ = checkpointer._read(step, trainer.abstract_state)  # pylint: disable=protected-access
  checkpointer.close()
  return jax.device_get(state)


def test_sigkill_three_times_then_resume_gives_the_bitwise_parameters_of_an_uninterrupted_run(
    tiny_config, tokens_dir, tmp_path):
  steps = ("--config.train.steps=60", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=30")
  reference = subprocess.run(_launch_command(tmp_path / "reference", tokens_dir, *steps), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=600)
  assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-2000:]

  rng = random.Random(7)
  killed = tmp_path / "killed"
  for low, high in ((6, 16), (22, 34), (40, 52)):  # three kills at random steps, each past the last resume point
    code, out = _run_until(_launch_command(killed, tokens_dir, *steps), rng.randint(low, high), signal.SIGKILL,
                           delay=rng.uniform(0.0, 0.3))
    assert code == -signal.SIGKILL, out[-2000:]
    if low > 6:
      assert "resumed from step" in out
  out = subprocess.run(_launch_command(killed, tokens_dir, *steps), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and "resumed from step" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
  assert re.search(r"^final: step=60 ", out.stdout, re.M)

  tiny_config.data.tokens_dir = tokens_dir
  expected, resumed = _final_state(tiny_config, tmp_path / "reference", 60), _final_state(tiny_config, killed, 60)
  _assert_trees_equal(resumed.params, expected.params)
  _assert_trees_equal(resumed.opt_state, expected.opt_state)
  _assert_trees_equal(resumed.guard, expected.guard)
  launches = json.loads((killed / "run.json").read_text())["launches"]
  assert len(launches) == 4 and all(launch["resumed_from"] for launch in launches[1:])


def test_sigterm_saves_the_current_step_and_a_torn_checkpoint_falls_back_to_the_previous(tokens_dir, tmp_path):
  run_dir = tmp_path / "run"
  steps = ("--config.train.steps=400", "--config.checkpoint.every_steps=10", "--config.eval.every_steps=400")
  code, out = _run_until(_launch_command(run_dir, tokens_dir, *steps), 23, signal.SIGTERM)
  assert code == 128 + signal.SIGTERM, out[-3000:]
  stopped = int(re.search(r"preempted \(SIGTERM\) at step (\d+): saved", out).group(1))
  assert stopped >= 23 and (run_dir / "checkpoints" / str(stopped) / checkpoint_lib.INTEGRITY).exists()
  events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
  assert [(e["event"], e["step"], e["signal"]) for e in events] == [("preempted", stopped, "SIGTERM")]

  # The newest checkpoint loses the second half of its largest file, as a write cut short by a crash would.
  files = [p for p in (run_dir / "checkpoints" / str(stopped)).rglob("*") if p.is_file() and p.suffix != ".json"]
  torn = max(files, key=lambda p: p.stat().st_size)
  torn.write_bytes(torn.read_bytes()[:torn.stat().st_size // 2])
  previous = max(s for s in range(10, stopped, 10))
  result = subprocess.run(_launch_command(run_dir, tokens_dir, *steps[1:], f"--config.train.steps={stopped + 3}"),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert f"checkpoints/{stopped} is corrupt or incomplete: " in result.stdout and "bytes" in result.stdout
  assert f"resumed from step {previous} " in result.stdout
  assert re.search(rf"^final: step={stopped + 3} ", result.stdout, re.M)
  assert "train.steps 400 -> " in result.stdout  # a new step count is allowed, and logged
