"""Mixture-of-Experts feed-forward block: top-k routing with per-expert capacity.

Each token is routed to its `model.experts_per_token` most probable experts, whose
outputs are summed with the chosen router probabilities renormalised to sum to 1
(Mixtral style; with one expert per token its raw probability, as in Switch). Rows are cut into routing groups of `model.moe_group_size` tokens (a
shorter row is one group): an expert takes at most C = ceil(capacity_factor * group * k /
num_experts) assignments of a group, first choices before second choices and earlier
positions first (GShard / Switch priority); the rest are dropped, so those tokens get
nothing from that expert and ride the residual stream.

Tokens move to and from the experts through one-hot dispatch and combine tensors
([groups, group, experts, capacity]) and einsums: under GSPMD the token-major to
expert-major einsum becomes an all-to-all over the expert mesh axis.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import layers
from lm import mlp

# Logical axes of the expert-major activations [experts, batch, capacity, ...]. The batch axis
# leaves out the expert mesh axis, which the expert dimension already uses.
EXPERT_INPUT_AXES = ("activation_expert", "activation_batch_no_expert", None, "activation_embed")
EXPERT_HIDDEN_AXES = ("activation_expert", "activation_batch_no_expert", None, "activation_mlp")
ROUTING_AXES = ("batch", "activation_seq", None, None)  # dispatch / combine [batch, seq, experts, capacity]


def group_length(cfg: ml_collections.FrozenConfigDict, seq_len: int) -> int:
  """Tokens per routing group: `model.moe_group_size`, or the whole row when it is shorter."""
  return min(seq_len, cfg.moe_group_size)


def capacity(cfg: ml_collections.FrozenConfigDict, seq_len: int) -> int:
  """Assignments one expert takes from one routing group of a row of `seq_len` tokens.

  ceil(capacity_factor * group * k / num_experts), at least 1, for group = group_length(cfg,
  seq_len). It is capped at the group length, since an expert gets each token at most once,
  so a larger capacity only adds empty slots.
  """
  group = group_length(cfg, seq_len)
  c = math.ceil(cfg.capacity_factor * group * cfg.experts_per_token / cfg.num_experts)
  return max(1, min(c, group))


class MoeMlp(nn.Module):
  """Top-k routed experts, each an `lm.mlp.Mlp` of the same activation, with stacked weights.

  Parameters: router [d_model, num_experts]; up (and gate when gated) [num_experts, d_model,
  ffn_dim]; down [num_experts, ffn_dim, d_model]; biases when `model.use_bias`.
  """

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jnp.ndarray, token_mask: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Routes each real token to its top-k experts and sums their weighted outputs.

    Args:
      x: [batch, seq, d_model] compute dtype.
      token_mask: [batch, seq] bool, False for padding: padding is not routed, not counted
        in `aux`, takes no capacity, and its output is 0.

    Returns:
      y: [batch, seq, d_model] compute dtype.
      aux: float32 statistics over real tokens, for the caller to weight and add:
        load_balance_loss: num_experts * sum_i f_i * P_i (1.0 when routing is uniform), with
          f_i the share of (token, choice) assignments routed to expert i before dropping and
          P_i the mean router probability of expert i.
        router_z_loss: mean of logsumexp(router logits)^2.
        dropped_tokens: (token, expert) assignments dropped for lack of capacity.
        routed_tokens: (token, expert) assignments, real tokens * k.
        expert_load: [num_experts] f_i (sums to 1).
    """
    cfg = self.cfg
    num_experts, k, d, f = cfg.num_experts, cfg.experts_per_token, cfg.d_model, cfg.ffn_dim
    if not 1 <= k <= num_experts:
      raise ValueError(f"model.experts_per_token = {k} must be in [1, model.num_experts = {num_experts}]")
    dtype, param_dtype = layers.dtypes(cfg)
    rows, row_len, _ = x.shape
    # Routing groups of moe_group_size tokens: the dispatch tensors grow with group length times
    # capacity, so long rows are cut into groups instead of growing quadratically.
    seq = group_length(cfg, row_len)
    if row_len % seq:
      raise ValueError(f"a row of {row_len} tokens does not split into MoE routing groups of "
                       f"model.moe_group_size = {cfg.moe_group_size}")
    batch = rows * (row_len // seq)
    x = x.astype(dtype).reshape(batch, seq, d)
    mask = token_mask.astype(jnp.bool_).reshape(batch, seq)
    maskf = mask.astype(jnp.float32)

    # Router in float32 end to end: a bfloat16 kernel or product would blur near-tied experts.
    router = self.param("router", nn.with_logical_partitioning(layers.kernel_init(cfg, d), ("embed", None)),
                        (d, num_experts), param_dtype)
    logits = jnp.einsum("bsd,de->bse", x.astype(jnp.float32), router.astype(jnp.float32))
    logits = nn.with_logical_constraint(logits, ("batch", "activation_seq", None))
    probs = jax.nn.softmax(logits, axis=-1)
    top_probs, top_experts = jax.lax.top_k(probs, k)  # [batch, seq, k]
    # With k > 1 the chosen probabilities are renormalised (Mixtral); with k = 1 that would make every
    # weight exactly 1 and cut the router off from the loss, so the raw probability is kept (Switch).
    weights = top_probs / jnp.sum(top_probs, axis=-1, keepdims=True) if k > 1 else top_probs

    # assigned[b, s, j, e]: choice j of token s goes to expert e (never for padding).
    assigned = jax.nn.one_hot(top_experts, num_experts, dtype=jnp.int32) * mask[:, :, None, None].astype(jnp.int32)
    # Slot of each assignment in its expert's queue: counting in (choice, position) order puts
    # every first choice of the row ahead of any second choice.
    by_choice = jnp.transpose(assigned, (0, 2, 1, 3)).reshape(batch, k * seq, num_experts)
    slot = (jnp.cumsum(by_choice, axis=1) - 1).reshape(batch, k, seq, num_experts).transpose(0, 2, 1, 3)
    slot = jnp.sum(slot * assigned, axis=-1)  # [batch, seq, k]
    cap = capacity(cfg, seq)
    kept = (jnp.sum(assigned, axis=-1) > 0) & (slot < cap)  # [batch, seq, k]

    # A token's k experts are distinct, so summing over choices leaves at most one 1 per (token, expert).
    slot_onehot = jax.nn.one_hot(slot, cap, dtype=jnp.float32) * kept[..., None]  # [batch, seq, k, cap]
    assigned_f = assigned.astype(jnp.float32)
    dispatch = jnp.einsum("bsje,bsjc->bsec", assigned_f, slot_onehot)
    combine = jnp.einsum("bsje,bsjc,bsj->bsec", assigned_f, slot_onehot, weights)
    dispatch = nn.with_logical_constraint(dispatch.astype(dtype), ROUTING_AXES)
    combine = nn.with_logical_constraint(combine.astype(dtype), ROUTING_AXES)

    expert_in = jnp.einsum("bsec,bsd->ebcd", dispatch, x)
    expert_in = nn.with_logical_constraint(expert_in, EXPERT_INPUT_AXES)

    def project(name, inputs):
      kernel = layers.param(self, cfg, name, (num_experts, d, f), ("expert", "embed", "mlp"),
                            layers.kernel_init(cfg, d))
      b = layers.bias(self, cfg, f"{name}_bias", (num_experts, f), ("expert", "mlp"))
      b = b[:, None, None, :] if cfg.use_bias else b
      return jnp.einsum("ebcd,edf->ebcf", inputs, kernel) + b

    if mlp.is_gated(cfg.mlp_activation):
      hidden = mlp.activation(cfg.mlp_activation, project("gate", expert_in)) * project("up", expert_in)
    else:
      hidden = mlp.activation(cfg.mlp_activation, project("up", expert_in))
    hidden = nn.with_logical_constraint(hidden, EXPERT_HIDDEN_AXES)
    down = layers.param(self, cfg, "down", (num_experts, f, d), ("expert", "mlp", "embed"),
                        layers.kernel_init(cfg, f, residual_output=True))
    down_bias = layers.bias(self, cfg, "down_bias", (num_experts, d), ("expert", "embed"))
    down_bias = down_bias[:, None, None, :] if cfg.use_bias else down_bias
    expert_out = jnp.einsum("ebcf,efd->ebcd", hidden, down) + down_bias
    expert_out = nn.with_logical_constraint(expert_out, EXPERT_INPUT_AXES)

    # Empty capacity slots hold bias-only outputs; their combine weight is 0, so they add nothing.
    y = jnp.einsum("bsec,ebcd->bsd", combine, expert_out)
    y = nn.with_logical_constraint(y, ("batch", "activation_seq", "activation_embed"))

    num_real = jnp.sum(maskf)
    routed = num_real * k
    expert_load = jnp.sum(assigned_f, axis=(0, 1, 2)) / jnp.maximum(routed, 1.0)
    mean_prob = jnp.sum(probs * maskf[..., None], axis=(0, 1)) / jnp.maximum(num_real, 1.0)
    z = jnp.square(jax.nn.logsumexp(logits, axis=-1))
    aux = {
        "load_balance_loss": num_experts * jnp.sum(expert_load * mean_prob),
        "router_z_loss": jnp.sum(z * maskf) / jnp.maximum(num_real, 1.0),
        "dropped_tokens": routed - jnp.sum(kept.astype(jnp.float32)),
        "routed_tokens": routed,
        "expert_load": expert_load,
    }
    return y.reshape(rows, row_len, d), aux
