"""The loss-spike and NaN guard: decides, inside the jitted train step, whether a step's update is sound.

A step is anomalous when its loss or gradient norm is not finite, when its loss exceeds the
mean of the last `guard.window` accepted losses by more than `guard.loss_spike_stds` of their
standard deviations, or when its gradient norm exceeds `guard.grad_norm_spike_factor` times the
median of the last `guard.window` accepted gradient norms. The spike tests start once the
window is full, so the steep early descent is never judged against too short a history.

The history lives in the train state (`GuardState`), so it is checkpointed with the
parameters and a resumed run judges its steps exactly as the uninterrupted run would.
What happens to an anomalous step is `guard.policy`: `skip` keeps the parameters and
optimizer state of before the step, `rollback` does the same and the training loop then
restores the last good checkpoint (see lm/train.py), `log` applies the update and only reports.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

POLICIES = ("skip", "rollback", "log")


@flax.struct.dataclass
class GuardState:
  losses: jax.Array  # float32 [window]: the last accepted losses, a ring written at count % window
  grad_norms: jax.Array  # float32 [window]: the last accepted global gradient norms
  count: jax.Array  # int32 scalar: accepted steps recorded in total
  learning_rate_scale: jax.Array  # float32 scalar: product of the rollback factors applied so far (1 = none)
  rollbacks: jax.Array  # int32 scalar: rollbacks so far in this run


def init(window: int) -> GuardState:
  return GuardState(losses=jnp.zeros((window,), jnp.float32), grad_norms=jnp.zeros((window,), jnp.float32),
                    count=jnp.zeros((), jnp.int32), learning_rate_scale=jnp.ones((), jnp.float32),
                    rollbacks=jnp.zeros((), jnp.int32))


def check(state: GuardState, loss: jax.Array, grad_norm: jax.Array,
          config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The guard's verdict on one step (float32 scalars, 1.0 = true, for the metrics stream).

  Args:
    state: the history before this step.
    loss: float32 scalar, the step's mean cross-entropy.
    grad_norm: float32 scalar, the global norm of its gradients (before clipping).
    config: the `guard` config group.

  Returns:
    {"guard/anomaly", "guard/nonfinite", "guard/loss_spike", "guard/grad_norm_spike"} flags and the
    thresholds they were judged against, "guard/loss_threshold" and "guard/grad_norm_threshold"
    (inf while the window is not yet full or the test is off).
  """
  full = state.count >= state.losses.shape[0]
  mean, std = jnp.mean(state.losses), jnp.std(state.losses)
  loss_threshold = jnp.where(full & (config.loss_spike_stds > 0), mean + config.loss_spike_stds * std, jnp.inf)
  grad_threshold = jnp.where(full & (config.grad_norm_spike_factor > 0),
                             config.grad_norm_spike_factor * jnp.median(state.grad_norms), jnp.inf)
  nonfinite = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
  # A NaN compares false with everything: the spike flags are only meaningful for finite values.
  loss_spike = ~nonfinite & (loss > loss_threshold)
  grad_spike = ~nonfinite & (grad_norm > grad_threshold)
  flags = {"guard/anomaly": nonfinite | loss_spike | grad_spike, "guard/nonfinite": nonfinite,
           "guard/loss_spike": loss_spike, "guard/grad_norm_spike": grad_spike}
  return {**{k: v.astype(jnp.float32) for k, v in flags.items()},
          "guard/loss_threshold": loss_threshold, "guard/grad_norm_threshold": grad_threshold}


def record(state: GuardState, loss: jax.Array, grad_norm: jax.Array, accepted: jax.Array) -> GuardState:
  """`state` with the step's loss and gradient norm added to the history if `accepted` (bool scalar)."""
  slot = state.count % state.losses.shape[0]
  losses = jnp.where(accepted, state.losses.at[slot].set(loss), state.losses)
  grad_norms = jnp.where(accepted, state.grad_norms.at[slot].set(grad_norm), state.grad_norms)
  return state.replace(losses=losses, grad_norms=grad_norms, count=state.count + accepted.astype(jnp.int32))


def window_statistics(state: GuardState) -> dict[str, jax.Array]:
  """Mean and standard deviation of the accepted losses in the window (over those recorded so far)."""
  size = state.losses.shape[0]
  filled = jnp.arange(size) < jnp.minimum(state.count, size)
  n = jnp.maximum(jnp.sum(filled), 1)
  mean = jnp.sum(jnp.where(filled, state.losses, 0.0)) / n
  variance = jnp.sum(jnp.where(filled, (state.losses - mean) ** 2, 0.0)) / n
  return {"train/loss_window_mean": mean, "train/loss_window_std": jnp.sqrt(variance)}


def select(anomaly: jax.Array, before: Any, after: Any) -> Any:
  """`before` where `anomaly` (bool scalar), else `after`, leaf by leaf (the skipped update)."""
  return jax.tree_util.tree_map(lambda b, a: jnp.where(anomaly, b, a), before, after)
