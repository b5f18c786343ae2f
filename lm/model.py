"""The decoder-only transformer: embed -> scanned pre-norm blocks -> RMSNorm -> logits.

The model reads only `config.model` and never sees the mesh: every parameter and the
main activations carry logical axis names, which `lm.sharding` maps to mesh axes.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from lm.attention import Attention
from lm.mlp import Mlp


def _rms_norm(cfg, name):
  return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), name=name)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    """x: [batch, seq, d_model] -> ([batch, seq, d_model], None) (the scan carry and no output)."""
    x = x + Attention(self.cfg, name="attention")(_rms_norm(self.cfg, "attention_norm")(x), segment_ids, positions)
    x = x + Mlp(self.cfg, name="mlp")(_rms_norm(self.cfg, "mlp_norm")(x))
    x = nn.with_logical_constraint(x, ("batch", "activation_seq", "activation_embed"))
    return x, None


class Transformer(nn.Module):
  cfg: ml_collections.FrozenConfigDict  # config.model, frozen

  @nn.compact
  def __call__(self, inputs, segment_ids, positions):
    """Next-token logits.

    Args:
      inputs: [batch, seq] int32 token ids.
      segment_ids: [batch, seq] int32 document index within the row, 0 = padding.
      positions: [batch, seq] int32 position within the document.

    Returns:
      [batch, seq, vocab_size] float32 logits.
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
                     name="embed")
    x = embed(inputs)
    x = nn.with_logical_constraint(x, ("batch", "activation_seq", "activation_embed"))
    blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = blocks(cfg, name="blocks")(x, segment_ids, positions)
    x = _rms_norm(cfg, "final_norm")(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
                        name="unembed")(x)
    logits = nn.with_logical_constraint(logits, ("batch", "activation_seq", "activation_vocab"))
    return logits.astype(jnp.float32)


def from_config(model_config: ml_collections.ConfigDict) -> Transformer:
  return Transformer(ml_collections.FrozenConfigDict(model_config))
