"""The SwiGLU feed-forward block."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections


class Mlp(nn.Module):
  """down(silu(gate(x)) * up(x)), no biases."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x):
    """x: [batch, seq, d_model] -> [batch, seq, d_model]."""
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)

    def dense(features, axes, kernel_init, name):
      return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=nn.with_logical_partitioning(kernel_init, axes), name=name)

    gate = dense(cfg.ffn_dim, ("embed", "mlp"), init, "gate")(x)
    up = dense(cfg.ffn_dim, ("embed", "mlp"), init, "up")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "activation_seq", "activation_mlp"))
    return dense(cfg.d_model, ("mlp", "embed"), out_init, "down")(hidden)
