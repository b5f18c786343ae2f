import jax.numpy as jnp
import pytest

from configs import base
from lm import optim


def test_schedule_warms_up_then_decays_to_a_tenth_of_peak():
  config = base.get_config().optim
  config.peak_learning_rate, config.warmup_steps = 1e-3, 10
  schedule = optim.learning_rate_schedule(config, total_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(55)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-4)
  assert float(schedule(100)) == pytest.approx(1e-4)


def test_norm_scales_and_biases_are_not_decayed():
  params = {"blocks": {"attention_norm": {"scale": jnp.ones((2, 4)), "bias": jnp.ones((2, 4))},
                       "mlp": {"up": jnp.ones((2, 4, 8)), "up_bias": jnp.ones((2, 8))}}}
  mask = optim.weight_decay_mask(params)
  assert mask == {"blocks": {"attention_norm": {"scale": False, "bias": False}, "mlp": {"up": True, "up_bias": False}}}
