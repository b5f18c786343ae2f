"""Training objectives: what the model predicts at each position and the losses it pays.

causal: the loader's rows as they are; logits at t predict the token at t + 1.
masked: BERT-style. A `masked_lm_fraction` of the real tokens is selected; of those, the
  `masked_lm_mask_random_keep` shares become <mask>, a random ordinary token, or stay; the
  model (bidirectional attention) predicts the original token at the selected positions only.

Losses are summed over target positions here and divided by the target count by the caller,
so sums from several batches or devices combine exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from data import tokenizer as tokenizer_lib

OBJECTIVES = ("causal", "masked")


def masked_lm_batch(batch: dict[str, jax.Array], cfg: ml_collections.ConfigDict,
                    rng: jax.Array) -> dict[str, jax.Array]:
  """Corrupts a packed row batch for the masked objective.

  Args:
    batch: "inputs", "segment_ids", "positions" ([batch, seq] int32) as the loader makes them.
    cfg: config.model (masked_lm_fraction, masked_lm_mask_random_keep, vocab_size).
    rng: key of this batch.

  Returns:
    The batch with "inputs" corrupted, "targets" the original tokens and "loss_mask" ([batch, seq]
    int32) set on the selected tokens only (never padding or special pieces).
  """
  tokens = batch["inputs"]
  select_rng, kind_rng, random_rng = jax.random.split(rng, 3)
  # Special pieces (BOS, EOS, padding) are never targets, as in BERT.
  ordinary = (batch["segment_ids"] > 0) & (tokens >= tokenizer_lib.FIRST_ORDINARY_ID)
  selected = ordinary & (jax.random.uniform(select_rng, tokens.shape) < cfg.masked_lm_fraction)
  mask_share, random_share, _ = cfg.masked_lm_mask_random_keep
  kind = jax.random.uniform(kind_rng, tokens.shape)
  random_tokens = jax.random.randint(random_rng, tokens.shape, tokenizer_lib.FIRST_ORDINARY_ID, cfg.vocab_size)
  corrupted = jnp.where(kind < mask_share, tokenizer_lib.MASK_ID,
                        jnp.where(kind < mask_share + random_share, random_tokens, tokens))
  return dict(batch, inputs=jnp.where(selected, corrupted, tokens).astype(jnp.int32), targets=tokens,
              loss_mask=selected.astype(jnp.int32))


def prepare_batch(batch: dict[str, jax.Array], cfg: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, jax.Array]:
  """The batch the model trains on under `model.objective` (the loader's batch for causal)."""
  if cfg.objective == "masked":
    return masked_lm_batch(batch, cfg, rng)
  return batch


def summed_losses(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                  with_logits_z: bool = False) -> dict[str, jax.Array]:
  """Float32 sums over the target positions.

  Args:
    logits: [batch, seq, vocab] float32.
    targets, loss_mask: [batch, seq] int32.
    with_logits_z: also sum logsumexp(logits)^2 (the z-loss). Only when it is used: another
      pass over the [batch, seq, vocab] logits costs about 5% of a small model's step on CPU.

  Returns:
    {"cross_entropy": summed nats, "tokens": target count, and "logits_z" if asked for}.
  """
  mask = loss_mask.astype(jnp.float32)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  sums = {"cross_entropy": jnp.sum(cross_entropy * mask), "tokens": jnp.sum(mask)}
  if with_logits_z:
    sums["logits_z"] = jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * mask)
  return sums


def total_loss(sums: dict[str, jax.Array], moe: dict[str, jax.Array], cfg: ml_collections.ConfigDict,
               batch_tokens: jax.Array | None = None, num_microbatches: int = 1) -> jax.Array:
  """The scalar that is differentiated: mean cross-entropy plus the weighted auxiliary losses.

  For one of `num_microbatches` microbatches of a batch with `batch_tokens` targets, the sums
  are divided by the whole batch's count and the MoE losses by the number of microbatches,
  so the microbatch losses (and their gradients) add up to those of the whole batch.
  """
  tokens = jnp.maximum(sums["tokens"] if batch_tokens is None else batch_tokens, 1.0)
  loss = sums["cross_entropy"] / tokens
  if cfg.logits_z_loss_weight > 0:
    loss += cfg.logits_z_loss_weight * sums["logits_z"] / tokens
  if moe:
    loss += (cfg.load_balance_loss_weight * moe["load_balance_loss"]
             + cfg.router_z_loss_weight * moe["router_z_loss"]) / num_microbatches
  return loss
