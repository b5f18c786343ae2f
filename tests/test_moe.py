import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import base
from configs import tiny
from lm import mlp
from lm import moe


def _config(**overrides) -> ml_collections.FrozenConfigDict:
  cfg = tiny.get_config().model
  values = dict(num_experts=4, experts_per_token=2, d_model=32, ffn_dim=64, capacity_factor=100.0)
  values.update(overrides)
  for name, value in values.items():
    cfg[name] = value
  return ml_collections.FrozenConfigDict(cfg)


def _init(cfg, x, mask, seed=0):
  module = moe.MoeMlp(cfg)
  params = nn.unbox(module.init(jax.random.PRNGKey(seed), x, mask))
  return module, params


def _randomise_biases(params, seed=1):
  """Biases start at zero; random ones make the reference check cover them."""
  rng = np.random.default_rng(seed)
  p = jax.tree_util.tree_map(np.asarray, params)
  for name in list(p["params"]):
    if name.endswith("_bias"):
      p["params"][name] = rng.normal(0.0, 0.1, p["params"][name].shape).astype(np.float32)
  return p


def _routing(cfg, params, x):
  """(top experts [b, s, k], renormalised weights [b, s, k], logits [b, s, e]) in float64."""
  logits = np.einsum("bsd,de->bse", np.asarray(x, np.float64), np.asarray(params["params"]["router"], np.float64))
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  top = np.argsort(-probs, axis=-1)[..., :cfg.experts_per_token]
  top_p = np.take_along_axis(probs, top, -1)
  weights = top_p / top_p.sum(-1, keepdims=True) if cfg.experts_per_token > 1 else top_p
  return top, weights, logits


def _kept_by_priority(cfg, top, mask, cap):
  """kept [b, s, k] by the GShard order: all first choices of a row, then seconds, each by position."""
  b, s, k = top.shape
  kept = np.zeros((b, s, k), bool)
  for row in range(b):
    count = np.zeros(cfg.num_experts, int)
    for j in range(k):
      for pos in range(s):
        if mask[row, pos] and count[top[row, pos, j]] < cap:
          count[top[row, pos, j]] += 1
          kept[row, pos, j] = True
  return kept


def _expert_mlp(cfg, p, e, v):
  """Expert e's MLP on one token v [d_model], float64, written out independently of the module."""
  p = {name: np.asarray(value, np.float64) for name, value in p["params"].items()}

  def bias(name):
    return p[name][e] if cfg.use_bias else 0.0

  up = v @ p["up"][e] + bias("up_bias")
  if mlp.is_gated(cfg.mlp_activation):
    gate = v @ p["gate"][e] + bias("gate_bias")
    hidden = gate / (1.0 + np.exp(-gate)) * up
  else:
    hidden = np.asarray(mlp.activation(cfg.mlp_activation, jnp.asarray(up, jnp.float32)), np.float64)
  return hidden @ p["down"][e] + bias("down_bias")


def _reference(cfg, params, x, kept):
  """y [b, s, d]: per token, the sum over its kept choices of weight * expert_mlp(x)."""
  top, weights, _ = _routing(cfg, params, x)
  x64 = np.asarray(x, np.float64)
  y = np.zeros(x.shape)
  for b, s, j in zip(*np.nonzero(kept)):
    y[b, s] += weights[b, s, j] * _expert_mlp(cfg, params, top[b, s, j], x64[b, s])
  return y


def _inputs(batch, seq, d, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (batch, seq, d), jnp.float32)
  return x, jnp.ones((batch, seq), bool)


@pytest.mark.parametrize("activation,use_bias", [("swiglu", False), ("gelu", True), ("relu2", False)])
def test_matches_dense_reference_when_nothing_drops(activation, use_bias):
  cfg = _config(mlp_activation=activation, use_bias=use_bias)
  x, mask = _inputs(2, 8, cfg.d_model)
  module, params = _init(cfg, x, mask)
  assert ("gate" in params["params"]) == mlp.is_gated(activation)
  assert params["params"]["up"].shape == (4, 32, 64) and params["params"]["down"].shape == (4, 64, 32)
  params = _randomise_biases(params) if use_bias else params
  y, aux = module.apply(params, x, mask)
  assert y.shape == x.shape and y.dtype == jnp.float32
  top, _, _ = _routing(cfg, params, x)
  expected = _reference(cfg, params, x, np.ones(top.shape, bool))
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5, rtol=1e-5)
  assert float(aux["dropped_tokens"]) == 0.0
  assert float(aux["routed_tokens"]) == 2 * 8 * 2
  load = np.bincount(top.ravel(), minlength=4) / top.size
  np.testing.assert_allclose(np.asarray(aux["expert_load"]), load, atol=1e-6)


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_overflow_is_dropped_by_choice_then_position(activation):
  cfg = _config(mlp_activation=activation, capacity_factor=0.25)
  x, mask = _inputs(2, 16, cfg.d_model, seed=3)
  module, params = _init(cfg, x, mask)
  cap = moe.capacity(cfg, 16)
  assert cap == math.ceil(0.25 * 16 * 2 / 4) == 2
  y, aux = module.apply(params, x, mask)
  top, _, _ = _routing(cfg, params, x)
  kept = _kept_by_priority(cfg, top, np.asarray(mask), cap)
  expected_dropped = int((~kept).sum())
  assert expected_dropped > 0
  assert float(aux["dropped_tokens"]) == expected_dropped
  np.testing.assert_allclose(np.asarray(y), _reference(cfg, params, x, kept), atol=1e-5, rtol=1e-5)
  all_dropped = ~kept.any(-1)
  assert all_dropped.any()
  assert np.all(np.asarray(y)[all_dropped] == 0.0)
  # expert_load counts assignments before dropping.
  np.testing.assert_allclose(np.asarray(aux["expert_load"]), np.bincount(top.ravel(), minlength=4) / top.size,
                             atol=1e-6)


def test_padding_is_not_routed_and_takes_no_capacity():
  cfg = _config(capacity_factor=1.0)
  seq = 16
  assert moe.capacity(cfg, seq) == 8
  x, _ = _inputs(2, seq, cfg.d_model, seed=5)
  # The first half of row 0 is padding, all one vector: counted, it would fill the same two experts
  # before any real token of the row gets a slot there.
  x = x.at[0, :8].set(3.0 * x[0, 0])
  mask = jnp.ones((2, seq), bool).at[0, :8].set(False)
  module, params = _init(cfg, x, mask)
  _, all_real_aux = module.apply(params, x, jnp.ones_like(mask))
  assert float(all_real_aux["dropped_tokens"]) > 0  # what the padding would do if it took capacity

  y, aux = module.apply(params, x, mask)
  assert np.all(np.asarray(y)[0, :8] == 0.0)
  assert float(aux["routed_tokens"]) == (8 + 16) * 2
  top, _, logits = _routing(cfg, params, x)
  kept = _kept_by_priority(cfg, top, np.asarray(mask), 8)
  assert kept[0, 8:].all()  # 8 real tokens never overflow a capacity of 8
  assert float(aux["dropped_tokens"]) == int((~kept[np.asarray(mask)]).sum())
  np.testing.assert_allclose(np.asarray(y), _reference(cfg, params, x, kept), atol=1e-5, rtol=1e-5)
  real = np.asarray(mask)
  load = np.bincount(top[real].ravel(), minlength=4) / top[real].size
  np.testing.assert_allclose(np.asarray(aux["expert_load"]), load, atol=1e-6)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(float(aux["router_z_loss"]), np.mean(lse[real] ** 2), rtol=1e-5)


def test_load_balance_loss_spreads_a_collapsed_router():
  cfg = _config(capacity_factor=1.25)
  x, mask = _inputs(4, 16, cfg.d_model, seed=7)
  x = x + 1.0  # a shared direction the collapsed router column keys on
  module, params = _init(cfg, x, mask)
  params["params"]["router"] = params["params"]["router"].at[:, 0].add(0.15)

  def loss_and_aux(p):
    _, aux = module.apply(p, x, mask)
    return aux["load_balance_loss"], aux

  _, start = loss_and_aux(params)
  assert float(jnp.max(start["expert_load"])) > 0.45  # expert 0 is every token's choice (0.5 is the top-2 max)
  assert float(start["load_balance_loss"]) > 1.5

  optimizer = optax.adam(3e-2)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(p, s):
    grads, _ = jax.grad(loss_and_aux, has_aux=True)(p)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(60):
    params, opt_state = step(params, opt_state)
  loss, end = loss_and_aux(params)
  # Routing is discrete, so the load keeps jittering around uniform (0.25); more than halfway there is the bar.
  assert float(jnp.max(end["expert_load"])) < 0.375, end["expert_load"]
  assert float(loss) < 1.05, loss


def test_router_z_loss_and_load_balance_loss_by_hand():
  cfg = _config(num_experts=2, experts_per_token=1, d_model=2, ffn_dim=4)
  ln3, ln7 = math.log(3.0), math.log(7.0)
  # With an identity router the logits are the inputs; the last token is padding.
  x = jnp.asarray([[[ln3, 0.0], [0.0, ln3], [ln7, 0.0], [10.0, 0.0]]], jnp.float32)
  mask = jnp.asarray([[True, True, True, False]])
  module, params = _init(cfg, x, mask)
  params["params"]["router"] = jnp.eye(2, dtype=jnp.float32)
  _, aux = module.apply(params, x, mask)
  # logsumexp: log 4, log 4, log 8 = 2, 2, 3 times log 2.
  np.testing.assert_allclose(float(aux["router_z_loss"]), (4 + 4 + 9) / 3 * math.log(2.0) ** 2, rtol=1e-6)
  # Probabilities (3/4, 1/4), (1/4, 3/4), (7/8, 1/8); top-1 picks experts 0, 1, 0.
  f = np.array([2 / 3, 1 / 3])
  p = np.array([0.75 + 0.25 + 0.875, 0.25 + 0.75 + 0.125]) / 3
  np.testing.assert_allclose(float(aux["load_balance_loss"]), 2 * np.sum(f * p), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(aux["expert_load"]), f, rtol=1e-6)
  assert float(aux["routed_tokens"]) == 3.0


def _rules():
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in base.get_config().mesh.rules)


def test_sharded_over_an_expert_axis_matches_unsharded():
  cfg = _config(capacity_factor=1.0, use_bias=True)
  x, mask = _inputs(8, 8, cfg.d_model, seed=11)
  mask = mask.at[:, -2:].set(False)
  module = moe.MoeMlp(cfg)
  key = jax.random.PRNGKey(0)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 1, 4, 1), ("data", "fsdp", "expert", "tensor"))
  rules = _rules()
  boxed = jax.eval_shape(module.init, key, x, mask)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = jax.jit(module.init, out_shardings=shardings)(key, x, mask)
    y, aux = jax.jit(module.apply)(params, x, mask)

  up = params["params"]["up"].value
  assert up.sharding.spec[0] == "expert"
  assert up.addressable_shards[0].data.shape == (1, 32, 64)
  assert params["params"]["down_bias"].value.sharding.spec[0] == "expert"

  unsharded = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  y_ref, aux_ref = module.apply(unsharded, x, mask)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5, rtol=1e-5)
  for name in aux_ref:
    np.testing.assert_allclose(np.asarray(aux[name]), np.asarray(aux_ref[name]), rtol=1e-5)
  assert float(jnp.abs(y).max()) > 0.0


def test_long_rows_are_routed_in_groups_of_moe_group_size():
  cfg = _config(capacity_factor=0.5, moe_group_size=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, cfg.d_model))
  mask = jnp.ones((2, 32), bool)
  module, params = _init(cfg, x, mask)
  y, aux = module.apply(params, x, mask)
  # The same as routing each 8-token group as a row of its own: capacity is per group.
  y_groups, aux_groups = module.apply(params, x.reshape(8, 8, cfg.d_model), mask.reshape(8, 8))
  np.testing.assert_allclose(np.asarray(y).reshape(8, 8, -1), np.asarray(y_groups), atol=1e-6)
  assert float(aux["dropped_tokens"]) == float(aux_groups["dropped_tokens"]) > 0
  assert moe.capacity(cfg, 32) == math.ceil(0.5 * 8 * 2 / 4)
  with pytest.raises(ValueError, match="moe_group_size = 8"):
    module.apply(params, x[:, :12], mask[:, :12])


@pytest.mark.parametrize("k", [1, 2])
def test_the_router_learns_from_the_output_for_top_1_and_top_k(k):
  cfg = _config(experts_per_token=k)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, cfg.d_model))
  mask = jnp.ones((2, 16), bool)
  module, params = _init(cfg, x, mask)
  target = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  grads = jax.grad(lambda p: jnp.mean((module.apply(p, x, mask)[0] - target) ** 2))(params)
  assert float(jnp.abs(grads["params"]["router"]).max()) > 1e-7  # a router cut off from the loss gets ~1e-12
  if k == 1:  # Switch: the output is the chosen expert's output scaled by its raw probability
    y, _ = module.apply(params, x, mask)
    kept = np.ones((2, 16, 1), bool)
    np.testing.assert_allclose(np.asarray(y), _reference(cfg, params, x, kept), rtol=1e-4, atol=1e-5)
    assert np.all(_routing(cfg, params, x)[1] < 1.0)
