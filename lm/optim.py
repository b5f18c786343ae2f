"""The optimizer: global-norm clipping, then AdamW on a linear-warmup + cosine schedule.

AdamW's moments are kept in `optim.state_dtype` (float32 by default; bfloat16 halves the
optimizer's memory) and updated in float32, whatever the dtype they are stored in.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup 0 -> peak over `warmup_steps`, then cosine decay to `end_learning_rate_fraction` * peak at `total_steps`."""
  peak = optim_config.peak_learning_rate
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=optim_config.warmup_steps,
      decay_steps=max(total_steps, optim_config.warmup_steps + 1),
      end_value=peak * optim_config.end_learning_rate_fraction,
  )


def weight_decay_mask(params):
  """True for every weight matrix and embedding; norm scales and biases (offsets, not weights) are not decayed."""
  def decayed(path, _):
    # The last dict key is the parameter's name, also for boxed (nn.Partitioned) leaves.
    name = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)][-1]
    return name not in ("scale", "bias") and not name.endswith("_bias")

  return jax.tree_util.tree_map_with_path(decayed, params)


def _cast_floats(tree, dtype):
  return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def stored_in(inner: optax.GradientTransformation, dtype: str) -> optax.GradientTransformation:
  """`inner` with its floating-point state stored in `dtype` and updated in float32."""
  if jnp.dtype(dtype) == jnp.float32:
    return inner

  def init(params):
    return _cast_floats(inner.init(params), dtype)

  def update(updates, state, params=None):
    updates, state = inner.update(updates, _cast_floats(state, jnp.float32), params)
    return updates, _cast_floats(state, dtype)

  return optax.GradientTransformation(init, update)


def make_optimizer(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """clip -> Adam moments (stored in state_dtype) -> decoupled weight decay (masked) -> -learning rate."""
  return optax.chain(
      optax.clip_by_global_norm(optim_config.clip_norm),
      stored_in(optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps),
                optim_config.state_dtype),
      optax.add_decayed_weights(optim_config.weight_decay, mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate_schedule(optim_config, total_steps)),
  )
