"""Grouped-query self-attention with document-causal masking over packed rows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import positions as positions_lib


def document_causal_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
  """Mask letting a token attend to earlier-or-same tokens of its own document only.

  Args:
    segment_ids: [batch, seq] int32; 0 marks padding, which attends only to padding.

  Returns:
    [batch, 1, seq, seq] bool (broadcast over heads), True where attention is allowed.
  """
  seq = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((seq, seq), dtype=jnp.bool_))
  same_document = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (causal[None] & same_document)[:, None]


def dot_product_attention(q, k, v, mask):
  """Softmax attention with grouped key/value heads, softmax in float32.

  Args:
    q: [batch, seq, num_heads, head_dim]
    k, v: [batch, seq, num_kv_heads, head_dim], num_heads a multiple of num_kv_heads.
    mask: [batch, 1, seq, seq] bool.

  Returns:
    [batch, seq, num_heads, head_dim], dtype of `q`.
  """
  batch, seq, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  # Query heads are grouped so each group shares one key/value head, without copying k or v.
  q = q.reshape(batch, seq, num_kv_heads, num_heads // num_kv_heads, head_dim)
  logits = jnp.einsum("bskgd,btkd->bkgst", q, k).astype(jnp.float32) / jnp.sqrt(head_dim).astype(jnp.float32)
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgst,btkd->bskgd", weights, v)
  return out.reshape(batch, seq, num_heads, head_dim)


class Attention(nn.Module):
  """Multi-head / grouped-query self-attention with RoPE, no biases."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    """x: [batch, seq, d_model] -> [batch, seq, d_model]; segment_ids, positions: [batch, seq] int32."""
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)

    def weight(name, shape, axes, initializer):
      return self.param(name, nn.with_logical_partitioning(initializer, axes), shape, param_dtype).astype(dtype)

    x = x.astype(dtype)
    q = jnp.einsum("bsd,dhk->bshk", x, weight("query", (cfg.d_model, cfg.num_heads, cfg.head_dim),
                                               ("embed", "heads", "head_dim"), init))
    k = jnp.einsum("bsd,dhk->bshk", x, weight("key", (cfg.d_model, cfg.num_kv_heads, cfg.head_dim),
                                               ("embed", "kv_heads", "head_dim"), init))
    v = jnp.einsum("bsd,dhk->bshk", x, weight("value", (cfg.d_model, cfg.num_kv_heads, cfg.head_dim),
                                               ("embed", "kv_heads", "head_dim"), init))
    q = nn.with_logical_constraint(q, ("batch", "activation_seq", "activation_heads", None))
    k = nn.with_logical_constraint(k, ("batch", "activation_seq", "activation_kv_heads", None))
    v = nn.with_logical_constraint(v, ("batch", "activation_seq", "activation_kv_heads", None))
    q = positions_lib.apply_rope(q, positions, cfg.rope_theta)
    k = positions_lib.apply_rope(k, positions, cfg.rope_theta)
    out = dot_product_attention(q, k, v, document_causal_mask(segment_ids))
    out = nn.with_logical_constraint(out, ("batch", "activation_seq", "activation_heads", None))
    return jnp.einsum("bshk,hkd->bsd", out, weight("out", (cfg.num_heads, cfg.head_dim, cfg.d_model),
                                                    ("heads", "head_dim", "embed"), out_init))
