"""The loss-spike and NaN guard: its verdicts, and runs that meet a bad batch under each policy."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lm import guard as guard_lib
from lm import optim
from lm import train


def _config(**overrides):
  from configs import base  # pylint: disable=import-outside-toplevel
  config = base.get_config().guard
  with config.unlocked():
    config.update(overrides)
  return config


def _filled(losses, grad_norms, window=4):
  state = guard_lib.init(window)
  for loss, norm in zip(losses, grad_norms):
    state = guard_lib.record(state, jnp.float32(loss), jnp.float32(norm), jnp.bool_(True))
  return state


def test_verdicts_on_nan_loss_spike_and_gradient_spike():
  config = _config(window=4, loss_spike_stds=3.0, grad_norm_spike_factor=5.0)
  state = _filled([3.0, 3.1, 2.9, 3.0], [1.0, 1.2, 0.8, 1.1])  # mean 3.0, std ~0.07; median norm 1.05
  verdict = lambda loss, norm: {k: float(v) for k, v in guard_lib.check(state, jnp.float32(loss), jnp.float32(norm),
                                                                         config).items()}  # noqa: E731
  ok = verdict(3.1, 1.3)
  assert ok["guard/anomaly"] == 0 and ok["guard/loss_threshold"] == pytest.approx(3.0 + 3 * np.std([3, 3.1, 2.9, 3]))
  assert verdict(3.5, 1.0)["guard/loss_spike"] == 1 and verdict(3.5, 1.0)["guard/anomaly"] == 1
  assert verdict(3.0, 6.0)["guard/grad_norm_spike"] == 1 and verdict(3.0, 5.0)["guard/anomaly"] == 0
  for loss, norm in ((float("nan"), 1.0), (3.0, float("inf")), (float("inf"), float("nan"))):
    flags = verdict(loss, norm)
    assert flags["guard/nonfinite"] == 1 and flags["guard/anomaly"] == 1 and flags["guard/loss_spike"] == 0


def test_spike_tests_wait_for_a_full_window_and_can_be_turned_off():
  config = _config(window=4, loss_spike_stds=3.0, grad_norm_spike_factor=5.0)
  partial = _filled([3.0, 3.0, 3.0], [1.0, 1.0, 1.0])
  assert float(guard_lib.check(partial, jnp.float32(30.0), jnp.float32(100.0), config)["guard/anomaly"]) == 0
  full = _filled([3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0])
  off = _config(window=4, loss_spike_stds=0.0, grad_norm_spike_factor=0.0)
  assert float(guard_lib.check(full, jnp.float32(30.0), jnp.float32(100.0), off)["guard/anomaly"]) == 0
  assert float(guard_lib.check(full, jnp.float32(jnp.nan), jnp.float32(1.0), off)["guard/anomaly"]) == 1


def test_rejected_steps_stay_out_of_the_history():
  state = _filled([1.0, 2.0], [1.0, 1.0], window=2)
  rejected = guard_lib.record(state, jnp.float32(99.0), jnp.float32(99.0), jnp.bool_(False))
  assert int(rejected.count) == 2 and 99.0 not in np.asarray(rejected.losses)
  stats = guard_lib.window_statistics(guard_lib.init(4).replace(losses=jnp.array([1.0, 3.0, 0, 0]),
                                                                count=jnp.int32(2)))
  assert float(stats["train/loss_window_mean"]) == 2.0 and float(stats["train/loss_window_std"]) == 1.0


def _guarded_config(tiny_config, tokens_dir, policy, loss_spike_stds=0.0):
  """Only the tests a case injects are on: a natural gradient spike of a tiny model on 8-row batches
  (seen at 10x the window median on some hosts' corpora) must not add events of its own."""
  config = tiny_config
  config.data.tokens_dir = tokens_dir
  config.train.steps = 36
  config.guard.policy, config.guard.window = policy, 8
  config.guard.loss_spike_stds, config.guard.grad_norm_spike_factor = loss_spike_stds, 0.0
  config.checkpoint.every_steps, config.eval.every_steps = 5, 36
  config.eval.sample_tokens, config.log.noise_scale_every_steps = 2, 0
  return config


def _jsonl(run_dir):
  with open(f"{run_dir}/metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_skip_drops_a_nan_batch_and_the_run_goes_on(tiny_config, tokens_dir):
  config = _guarded_config(tiny_config, tokens_dir, "skip")

  def poison(index, batch):  # ids past the vocabulary: the embedding lookup yields NaN
    return dict(batch, inputs=np.full_like(batch["inputs"], config.model.vocab_size + 7)) if index == 20 else batch

  result = train.run(config, batch_hook=poison)
  assert [(e["event"], e["step"], e["batch"], e["reason"]) for e in result["events"]] == [
      ("skip", 21, 20, "non-finite loss or gradient")]
  records = _jsonl(config.train.run_dir)
  events = [r for r in records if r.get("event") == "skip"]
  assert len(events) == 1 and events[0]["step"] == 21 and events[0]["batch"] == 20 and events[0]["update"] == "skipped"
  losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
  assert np.isnan(losses[21]) and all(np.isfinite(losses[s]) for s in range(22, 37))
  assert np.isfinite(result["val_loss"]) and result["step"] == 36


def test_rollback_restores_the_last_checkpoint_lowers_the_learning_rate_and_skips_the_window(tiny_config,
                                                                                             tokens_dir):
  config = _guarded_config(tiny_config, tokens_dir, "rollback", loss_spike_stds=12.0)
  rng = np.random.default_rng(0)

  # Batch 24 is trained at step 25, a checkpoint step: its verdict must be acted on before the save.
  def garbage(index, batch):  # random inputs, every target the last piece: a loss far above the trained model's
    if index != 24:
      return batch
    noise = rng.integers(5, config.model.vocab_size, size=batch["inputs"].shape, dtype=batch["inputs"].dtype)
    return dict(batch, inputs=noise, targets=np.full_like(noise, config.model.vocab_size - 1))

  result = train.run(config, batch_hook=garbage)
  rollbacks = [e for e in result["events"] if e["event"] == "rollback"]
  assert len(rollbacks) == 1, result["events"]
  event = rollbacks[0]
  assert (event["step"], event["batch"], event["restored_step"], event["skipped_batches"]) == (25, 24, 20, [20, 24])
  assert event["learning_rate_scale"] == 0.5 and event["reason"].startswith("loss spike")
  assert result["step"] == 36 and np.isfinite(result["val_loss"])
  records = _jsonl(config.train.run_dir)
  assert [r["step"] for r in records if r.get("event") == "rollback"] == [25]
  # Steps 21.. were trained again after the rollback, at half the scheduled learning rate.
  last = {r["step"]: r for r in records if "train/loss" in r}
  schedule = optim.learning_rate_schedule(config.optim, config.train.steps)
  assert last[30]["train/learning_rate"] == pytest.approx(0.5 * float(schedule(29)), rel=1e-6)
  assert last[30]["guard/rollbacks"] == 1 and last[30]["guard/anomaly"] == 0
  assert last[21]["train/learning_rate"] == pytest.approx(0.5 * float(schedule(20)), rel=1e-6)
