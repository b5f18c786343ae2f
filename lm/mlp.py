"""The dense feed-forward block: ReLU, GELU, squared ReLU, or gated SiLU (SwiGLU)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import layers

ACTIVATIONS = ("relu", "gelu", "relu2", "swiglu")


def activation(name: str, x: jnp.ndarray) -> jnp.ndarray:
  """The elementwise nonlinearity of `model.mlp_activation` (for swiglu: the SiLU of the gate)."""
  if name == "relu":
    return jax.nn.relu(x)
  if name == "gelu":
    return jax.nn.gelu(x, approximate=True)  # the tanh form GPT-2 uses
  if name == "relu2":
    return jnp.square(jax.nn.relu(x))
  if name == "swiglu":
    return jax.nn.silu(x)
  raise ValueError(f"unknown model.mlp_activation {name!r}; expected one of {ACTIVATIONS}")


def is_gated(name: str) -> bool:
  """Gated activations multiply act(gate(x)) by a second projection up(x)."""
  return name == "swiglu"


class Mlp(nn.Module):
  """down(act(up(x))) or, gated, down(act(gate(x)) * up(x)); biases when `model.use_bias`."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x):
    """x: [batch, seq, d_model] -> [batch, seq, d_model], compute dtype."""
    cfg = self.cfg
    d, f = cfg.d_model, cfg.ffn_dim

    def project(name, inputs):
      kernel = layers.param(self, cfg, name, (d, f), ("embed", "mlp"), layers.kernel_init(cfg, d))
      return layers.matmul(inputs, kernel, bias=layers.bias(self, cfg, f"{name}_bias", (f,), ("mlp",)))

    x = x.astype(layers.dtypes(cfg)[0])
    if is_gated(cfg.mlp_activation):
      hidden = activation(cfg.mlp_activation, project("gate", x)) * project("up", x)
    else:
      hidden = activation(cfg.mlp_activation, project("up", x))
    hidden = nn.with_logical_constraint(hidden, ("batch", "activation_seq", "activation_mlp"))
    down = layers.param(self, cfg, "down", (f, d), ("mlp", "embed"), layers.kernel_init(cfg, f, residual_output=True))
    return layers.matmul(hidden, down, bias=layers.bias(self, cfg, "down_bias", (d,), ("embed",)))
