"""The transformer: embed -> scanned groups of blocks -> (final norm) -> logits.

Every architecture choice is a field of `config.model` (see configs/base.py): positions
(rope, learned, alibi, none), norm type and placement, MLP activation, attention heads,
sliding-window pattern, QK-norm, soft-cap, MoE layers, objective, remat and init.

Depth is an `nn.scan` over *groups* of layers. A group is the shortest run of layers after
which the per-layer pattern repeats (the attention pattern, and MoE every k-th layer), so
each layer's kind is static: local and global layers, dense and MoE MLPs compile to
separate code while compile time still does not grow with depth. Parameters of layer l
live at params["blocks"][f"layer_{l % group}"] with index l // group on their leading
"layers" axis.

The model reads only `config.model` and never sees the mesh: parameters and the main
activations carry logical axis names, which `lm.sharding` maps to mesh axes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import layers
from lm.attention import Attention
from lm.mlp import Mlp
from lm.moe import MoeMlp

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projection outputs
}


def group_size(cfg: ml_collections.ConfigDict) -> int:
  """Layers per scanned group: the period of the attention pattern and of the MoE layers."""
  period = len(cfg.attention_pattern)
  if cfg.num_experts > 0:
    period = math.lcm(period, cfg.moe_every)
  return period


def layer_window(cfg: ml_collections.ConfigDict, layer: int) -> int:
  """Sliding window of `layer` (0 = global)."""
  kind = cfg.attention_pattern[layer % len(cfg.attention_pattern)]
  return cfg.sliding_window if kind == "local" else 0


def layer_is_moe(cfg: ml_collections.ConfigDict, layer: int) -> bool:
  return cfg.num_experts > 0 and (layer + 1) % cfg.moe_every == 0


class Block(nn.Module):
  """One transformer layer.

  pre-norm:  x + attn(norm(x)), then h + mlp(norm(h)).
  post-norm: norm(x + attn(x)), then norm(h + mlp(h)).
  """

  cfg: ml_collections.FrozenConfigDict
  window: int = 0
  moe: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    """x: [batch, seq, d_model] -> ([batch, seq, d_model], MoE metrics dict or {})."""
    cfg = self.cfg
    attention = Attention(cfg, window=self.window, decode=self.decode, name="attention")
    if self.moe:
      moe = MoeMlp(cfg, name="moe")
      mlp = lambda h: moe(h, segment_ids > 0)  # padding is not routed
    else:
      dense = Mlp(cfg, name="mlp")
      mlp = lambda h: (dense(h), {})
    if cfg.norm_position == "pre":
      x = x + attention(layers.norm(cfg, "attention_norm")(x), segment_ids, positions)
      out, aux = mlp(layers.norm(cfg, "mlp_norm")(x))
      x = x + out
    else:
      x = layers.norm(cfg, "attention_norm")(x + attention(x, segment_ids, positions))
      out, aux = mlp(x)
      x = layers.norm(cfg, "mlp_norm")(x + out)
    x = nn.with_logical_constraint(x, ("batch", "activation_seq", "activation_embed"))
    return x, aux


class Group(nn.Module):
  """`group_size(cfg)` consecutive layers; the body of the scan over depth."""

  cfg: ml_collections.FrozenConfigDict
  decode: bool = False

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    """x: [batch, seq, d_model] -> (x, metrics summed over this group's MoE layers)."""
    metrics = {}
    for i in range(group_size(self.cfg)):
      x, aux = Block(self.cfg, window=layer_window(self.cfg, i), moe=layer_is_moe(self.cfg, i),
                     decode=self.decode, name=f"layer_{i}")(x, segment_ids, positions)
      for key, value in aux.items():
        metrics[key] = metrics.get(key, 0.0) + value
    return x, metrics


class Transformer(nn.Module):
  cfg: ml_collections.FrozenConfigDict  # config.model, frozen

  @nn.compact
  def __call__(self, inputs, segment_ids, positions, decode: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Logits of every position (next-token for the causal objective, the token itself for masked).

    Args:
      inputs: [batch, seq] int32 token ids.
      segment_ids: [batch, seq] int32 document index within the row, 0 = padding.
      positions: [batch, seq] int32 position within the document.
      decode: write keys/values into the "cache" collection and attend over it (pass
        mutable=["cache"]); the first (init) call sizes the cache to `seq`.

    Returns:
      logits: [batch, seq, vocab_size] float32.
      aux: {} for dense models; for MoE, float32 scalars over all MoE layers: load_balance_loss
        and router_z_loss (means over layers), dropped_tokens and routed_tokens (sums), and
        expert_load [num_experts] (mean over layers).
    """
    cfg = self.cfg
    dtype, param_dtype = layers.dtypes(cfg)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=nn.with_logical_partitioning(layers.embedding_init(cfg), ("vocab", "embed")),
                     name="embed")
    x = embed(inputs)
    if cfg.position_embedding == "learned":
      x += nn.Embed(cfg.max_seq_len, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                    embedding_init=nn.with_logical_partitioning(layers.embedding_init(cfg), (None, "embed")),
                    name="position_embed")(positions)
    x = nn.with_logical_constraint(x, ("batch", "activation_seq", "activation_embed"))

    group = Group
    if cfg.remat_policy != "none" and not decode:  # decoding has no backward pass to save memory for
      group = nn.remat(Group, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    num_groups = cfg.num_layers // group_size(cfg)
    blocks = nn.scan(group, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast, nn.broadcast), length=num_groups,
                     metadata_params={nn.PARTITION_NAME: "layers"}, unroll=num_groups if cfg.unroll_layers else 1)
    x, metrics = blocks(cfg, decode=decode, name="blocks")(x, segment_ids, positions)
    if cfg.norm_position == "pre":
      x = layers.norm(cfg, "final_norm")(x)
    # Logits accumulate in float32 whatever the compute dtype: the softmax and loss read them in float32.
    if cfg.tie_embeddings:
      logits = layers.matmul(x.astype(dtype), embed.embedding.astype(dtype), kernel_transposed=True,
                             preferred_element_type=jnp.float32)
    else:
      kernel = layers.param(self, cfg, "unembed", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            layers.kernel_init(cfg, cfg.d_model))
      logits = layers.matmul(x.astype(dtype), kernel, preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(logits, ("batch", "activation_seq", "activation_vocab"))
    return logits, _reduce_moe_metrics(cfg, metrics)


def _reduce_moe_metrics(cfg, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-group sums [num_groups, ...] -> totals, and means over the MoE layers for losses and loads."""
  if not metrics:
    return {}
  num_moe_layers = sum(layer_is_moe(cfg, layer) for layer in range(cfg.num_layers))
  totals = {k: jnp.sum(v, axis=0) for k, v in metrics.items()}
  for key in ("load_balance_loss", "router_z_loss", "expert_load"):
    totals[key] = totals[key] / num_moe_layers
  return totals


def from_config(model_config: ml_collections.ConfigDict) -> Transformer:
  return Transformer(ml_collections.FrozenConfigDict(model_config))


def init_inputs(seq_len: int) -> jax.Array:
  """A [1, <= 16] int32 dummy input for `init`: parameter shapes do not depend on the sequence length."""
  return jnp.zeros((1, min(seq_len, 16)), jnp.int32)


def abstract_params(model_config: ml_collections.ConfigDict) -> Any:
  """The parameter tree of `init`: ShapeDtypeStructs boxed with logical axis names (nn.Partitioned); allocates nothing."""
  model = from_config(model_config)
  dummy = init_inputs(model_config.max_seq_len)
  return jax.eval_shape(lambda rng: model.init(rng, dummy, dummy, dummy)["params"], jax.random.PRNGKey(0))
