"""Self-attention: multi-head, grouped-query and multi-query, with every masking and position option.

Which keys a query sees is decided from four integer arrays, the same in training and in
decoding: each query's and key's absolute index in the sequence (`q_index`, `k_index`) and
document id (`q_segment`, `k_segment`). A key is visible when it is in the same document,
not after the query (causal objective), and within `window` tokens (local layers).

Three implementations compute the same function (`model.attention_impl`):
  xla: the plain einsum-softmax-einsum; builds the [q_len, k_len] logits.
  dot_product_attention: `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).
  blockwise: `lm.blockwise_attention`, which never builds the [q_len, k_len] matrix.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import blockwise_attention
from lm import layers
from lm import positions as positions_lib

IMPLEMENTATIONS = ("xla", "dot_product_attention", "blockwise", "auto")


def attention_mask(q_index, k_index, q_segment, k_segment, *, causal: bool, window: int) -> jnp.ndarray:
  """[batch, q_len, k_len] bool, True where query t may attend to key s.

  Args:
    q_index, q_segment: [batch, q_len] int32 absolute index and document id of each query.
    k_index, k_segment: [batch, k_len] int32 the same for each key.
    causal: keys after the query are hidden.
    window: if > 0, only keys fewer than `window` positions away are visible.
  """
  allowed = q_segment[:, :, None] == k_segment[:, None, :]
  distance = q_index[:, :, None] - k_index[:, None, :]
  if causal:
    allowed &= distance >= 0
  if window > 0:
    allowed &= jnp.abs(distance) < window
  return allowed


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _softmax_attention(q, k, v, mask, bias, softcap: float):
  """softmax(cap(q . k / sqrt(head_dim)) + bias, masked) . v, with a hand-written backward pass.

  Args:
    q: [batch, kv_heads, group, q_len, head_dim]; k, v: [batch, kv_heads, k_len, head_dim].
    mask: bool, broadcastable to [batch, kv_heads, group, q_len, k_len]; False hides a key.
    bias: None or float32 logits offsets of that shape (ALiBi; a constant, it gets no gradient).
    softcap: 0, or c of logits -> c * tanh(logits / c).

  Returns:
    [batch, kv_heads, group, q_len, head_dim], dtype of `v`.

  The backward pass reuses the saved probabilities: dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)),
  dQ = dS K, dK = dS^T Q. Differentiating through the mask, the max subtraction and the
  normalisation instead took 50% longer on CPU (one layer at [16, 256, 8 heads, 64] in query chunks
  of 64, forward + backward: 123 against 82 ms in the same run).
  """
  return _softmax_attention_forward(q, k, v, mask, bias, softcap)[0]


def _softmax_attention_forward(q, k, v, mask, bias, softcap):
  head_dim = q.shape[-1]
  logits = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) / np.float32(np.sqrt(head_dim))
  capped = None
  if softcap > 0:
    capped = jnp.tanh(logits / softcap)
    logits = softcap * capped
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(v.dtype), v)
  return out, (q, k, v, probs, capped, out)


def _softmax_attention_backward(softcap, residuals, d_out):
  q, k, v, probs, capped, out = residuals
  d_v = jnp.einsum("bkgts,bkgtd->bksd", probs.astype(v.dtype), d_out.astype(v.dtype))
  d_probs = jnp.einsum("bkgtd,bksd->bkgts", d_out.astype(v.dtype), v, preferred_element_type=jnp.float32)
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_logits = probs * (d_probs - row)  # hidden keys have probability 0, hence gradient 0
  if capped is not None:
    d_logits = d_logits * (1.0 - jnp.square(capped))
  d_logits = d_logits / np.float32(np.sqrt(q.shape[-1]))
  d_q = jnp.einsum("bkgts,bksd->bkgtd", d_logits.astype(q.dtype), k)
  d_k = jnp.einsum("bkgts,bkgtd->bksd", d_logits.astype(k.dtype), q)
  return d_q, d_k, d_v, None, None


_softmax_attention.defvjp(_softmax_attention_forward, _softmax_attention_backward)


def xla_attention(q, k, v, q_index, k_index, q_segment, k_segment, *, causal, window, alibi_slopes, softcap,
                  query_chunk: int = 0):
  """Attention with the full logits matrix, softmax in float32.

  Args:
    q: [batch, q_len, num_heads, head_dim]; query head h uses key/value head h // (num_heads // num_kv_heads).
    k, v: [batch, k_len, num_kv_heads, head_dim].
    q_index, k_index, q_segment, k_segment: see `attention_mask`.
    alibi_slopes: None or [num_heads] float32; logits -= slope * |q_index - k_index|.
    softcap: if > 0, logits = softcap * tanh(logits / softcap) (before the ALiBi bias).
    query_chunk: if > 0, self-attention over a row (q_index == k_index == 0, 1, ...) that is causal: the
      queries are cut into chunks of this many and chunk i attends only to the keys up to its own end (and
      from its start minus the window on local layers), skipping the logits the mask would hide anyway.

  Returns:
    [batch, q_len, num_heads, head_dim], dtype of `q`.
  """
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  group = num_heads // num_kv_heads
  # Head-major layouts ([batch, kv_heads, group, q_len, head_dim] and [batch, kv_heads, k_len, head_dim]) make
  # both products plain batched matmuls over contiguous [len, head_dim] slabs; query heads are grouped under the
  # key/value head they share, so k and v are never repeated.
  q = q.reshape(batch, q_len, num_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  slopes = None if alibi_slopes is None else jnp.asarray(alibi_slopes).reshape(num_kv_heads, group)

  def attend_keys(q_lo, q_hi, k_lo, k_hi):
    """Output [batch, kv_heads, group, q_hi - q_lo, head_dim] of queries q_lo:q_hi over keys k_lo:k_hi."""
    qi, ki = q_index[:, q_lo:q_hi], k_index[:, k_lo:k_hi]
    bias = None
    if slopes is not None:
      distance = jnp.abs(qi[:, :, None] - ki[:, None, :]).astype(jnp.float32)  # [b, t, s]
      bias = -slopes[None, :, :, None, None] * distance[:, None, None]
    mask = attention_mask(qi, ki, q_segment[:, q_lo:q_hi], k_segment[:, k_lo:k_hi], causal=causal, window=window)
    return _softmax_attention(q[:, :, :, q_lo:q_hi], k[:, :, k_lo:k_hi], v[:, :, k_lo:k_hi], mask[:, None, None],
                              bias, float(softcap))

  if query_chunk > 0 and causal and q_len == k.shape[2] and q_len > query_chunk:
    chunks = []
    for q_lo in range(0, q_len, query_chunk):
      q_hi = min(q_lo + query_chunk, q_len)
      k_lo = max(0, q_lo - window + 1) if window > 0 else 0
      chunks.append(attend_keys(q_lo, q_hi, k_lo, q_hi))
    out = jnp.concatenate(chunks, axis=3)
  else:
    out = attend_keys(0, q_len, 0, k.shape[2])
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, num_heads, head_dim)


def jax_nn_attention(q, k, v, q_index, k_index, q_segment, k_segment, *, causal, window, alibi_slopes, softcap):
  """`jax.nn.dot_product_attention` (same args as `xla_attention`).

  On GPU it asks for cuDNN flash attention (implementation="cudnn", which takes bfloat16 or
  float16 and raises on shapes it cannot run); elsewhere it runs jax's XLA version.
  """
  if softcap > 0:
    raise ValueError("jax.nn.dot_product_attention has no logit soft-cap")
  implementation = "cudnn" if jax.default_backend() == "gpu" else "xla"
  mask = attention_mask(q_index, k_index, q_segment, k_segment, causal=causal, window=window)[:, None]
  bias = None
  if alibi_slopes is not None:
    distance = jnp.abs(q_index[:, :, None] - k_index[:, None, :]).astype(jnp.float32)
    bias = -jnp.asarray(alibi_slopes)[None, :, None, None] * distance[:, None]
    # XLA adds the bias in float32 (bfloat16 would round away the small slope differences); cuDNN wants q's dtype.
    bias = bias.astype(q.dtype) if implementation == "cudnn" else bias
  local_window = None
  if window > 0:  # also in the mask; given separately so cuDNN can skip blocks outside the window
    local_window = (window - 1, 0 if causal else window - 1)
  # is_causal only where query i is key i (self-attention over a row); a decode step masks by index instead.
  same_length = q.shape[1] == k.shape[1]
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal and same_length,
                                      local_window_size=local_window if same_length else None,
                                      implementation=implementation)


def resolve_impl(cfg: ml_collections.FrozenConfigDict, seq_len: int, backend: str | None = None) -> str:
  """The implementation `model.attention_impl` names, with 'auto' decided by platform and length.

  backend: 'cpu' | 'gpu' | 'tpu' the step will run on; None = this process's default backend.
  """
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  backend = jax.default_backend() if backend is None else backend
  # cuDNN flash attention takes 16-bit inputs and has no soft-cap.
  if (backend == "gpu" and cfg.attention_logit_softcap == 0
      and layers.compute_dtype_name(cfg.compute_dtype, backend) in ("bfloat16", "float16")):
    return "dot_product_attention"
  if seq_len >= cfg.blockwise_min_seq_len:
    return "blockwise"
  return "xla"


def attend(cfg: ml_collections.FrozenConfigDict, q, k, v, q_index, k_index, q_segment, k_segment, window: int,
           self_attention: bool = False):
  """Dispatches to the implementation of `cfg` (arguments as `xla_attention`).

  self_attention: the queries are the keys (a row attending to itself, q_index == k_index == 0, 1, ...), so the
    xla implementation may cut causal attention into `model.attention_query_chunk` chunks.
  """
  impl = resolve_impl(cfg, k.shape[1])
  slopes = positions_lib.alibi_slopes(cfg.num_heads) if cfg.position_embedding == "alibi" else None
  kwargs = dict(causal=cfg.objective == "causal", window=window, alibi_slopes=slopes,
                softcap=cfg.attention_logit_softcap)
  if impl == "xla":
    return xla_attention(q, k, v, q_index, k_index, q_segment, k_segment,
                         query_chunk=cfg.attention_query_chunk if self_attention else 0, **kwargs)
  if impl == "dot_product_attention":
    return jax_nn_attention(q, k, v, q_index, k_index, q_segment, k_segment, **kwargs)
  if impl == "blockwise":
    return blockwise_attention.blockwise_attention(q, k, v, q_index, k_index, q_segment, k_segment,
                                                   block_size=cfg.attention_block_size, **kwargs)
  raise ValueError(f"unknown model.attention_impl {impl!r}; expected one of {IMPLEMENTATIONS}")


class Attention(nn.Module):
  """Self-attention over packed rows, or one decoding step against the KV cache.

  In decode mode the keys and values of every call are written into the "cache" collection
  ([batch, slots, num_kv_heads, head_dim] each, plus each slot's document id and position,
  and the write index). A global layer has one slot per position up to the sequence length
  of the `init` call that creates the cache; a local layer has a rolling buffer of `window`
  slots, so its memory does not grow with the length decoded.
  """

  cfg: ml_collections.FrozenConfigDict
  window: int = 0  # 0 = global attention, else the sliding window of this layer
  decode: bool = False

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    """x: [batch, seq, d_model] -> [batch, seq, d_model]; segment_ids, positions: [batch, seq] int32."""
    cfg = self.cfg
    batch, seq = x.shape[:2]
    d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = layers.kernel_init(cfg, d)

    def project(name, heads, axes):
      kernel = layers.param(self, cfg, name, (d, heads, hd), ("embed", axes, "head_dim"), init)
      return layers.matmul(x, kernel, bias=layers.bias(self, cfg, f"{name}_bias", (heads, hd), (axes, "head_dim")))

    x = x.astype(layers.dtypes(cfg)[0])
    q, k, v = project("query", h, "heads"), project("key", kv, "kv_heads"), project("value", kv, "kv_heads")
    q = nn.with_logical_constraint(q, ("batch", "activation_seq", "activation_heads", None))
    k = nn.with_logical_constraint(k, ("batch", "activation_seq", "activation_kv_heads", None))
    v = nn.with_logical_constraint(v, ("batch", "activation_seq", "activation_kv_heads", None))
    if cfg.qk_norm:
      q = layers.norm(cfg, "query_norm", "head_dim")(q)
      k = layers.norm(cfg, "key_norm", "head_dim")(k)
    if cfg.position_embedding == "rope":
      inv_freq, attention_factor = positions_lib.config_frequencies(cfg)
      q = positions_lib.apply_rope(q, positions, inv_freq, attention_factor)
      k = positions_lib.apply_rope(k, positions, inv_freq, attention_factor)

    index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    q_index, k_index, k_segment = index, index, segment_ids
    if self.decode:
      k, v, q_index, k_index, k_segment = self._update_cache(k, v, segment_ids)
    out = attend(cfg, q, k, v, q_index, k_index, segment_ids, k_segment, self.window,
                 self_attention=k.shape[1] == seq and not self.decode)
    out = nn.with_logical_constraint(out, ("batch", "activation_seq", "activation_heads", None))
    out_kernel = layers.param(self, cfg, "out", (h, hd, d), ("heads", "head_dim", "embed"),
                              layers.kernel_init(cfg, h * hd, residual_output=True))
    return layers.matmul(out, out_kernel, in_dims=2, bias=layers.bias(self, cfg, "out_bias", (d,), ("embed",)))

  def _update_cache(self, k, v, segment_ids):
    """Writes this call's keys/values into the cache; returns the keys to attend over and the query/key indices.

    Global layers write at the cache index and attend over the whole cache (unwritten slots
    lie after the queries, so causality hides them). Local layers keep a rolling buffer of
    their last `window` keys: they attend over the buffer as it was plus this call's keys,
    then keep the newest `window` of those in the buffer (slot = position mod window).
    """
    batch, seq = segment_ids.shape
    initializing = not self.has_variable("cache", "key")
    size = min(self.window, seq) if self.window > 0 else seq  # at init, seq is the cache length
    cached_key = self.variable("cache", "key", jnp.zeros, (batch, size) + k.shape[2:], k.dtype)
    cached_value = self.variable("cache", "value", jnp.zeros, (batch, size) + v.shape[2:], v.dtype)
    cached_segment = self.variable("cache", "segment_ids", jnp.zeros, (batch, size), jnp.int32)
    # Absolute position held by each slot; -1 (with segment 0, which no query has) marks an empty slot.
    cached_index = self.variable("cache", "positions", lambda: jnp.full((batch, size), -1, jnp.int32))
    cache_index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    if initializing:  # the init call only sizes the cache; it attends like training
      return k, v, index, index, segment_ids
    start, size = cache_index.value, cached_key.value.shape[1]
    q_index = start + index
    k, v = k.astype(cached_key.value.dtype), v.astype(cached_value.value.dtype)
    cache_index.value = start + seq
    if self.window == 0:
      cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, (0, start, 0, 0))
      cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, (0, start, 0, 0))
      cached_segment.value = jax.lax.dynamic_update_slice(cached_segment.value, segment_ids, (0, start))
      cached_index.value = jax.lax.dynamic_update_slice(cached_index.value, q_index, (0, start))
      k_index = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (batch, size))
      return cached_key.value, cached_value.value, q_index, k_index, cached_segment.value
    keys = jnp.concatenate([cached_key.value, k], axis=1)
    values = jnp.concatenate([cached_value.value, v], axis=1)
    k_index = jnp.concatenate([cached_index.value, q_index], axis=1)
    k_segment = jnp.concatenate([cached_segment.value, segment_ids], axis=1)
    keep = min(seq, size)
    slots = (start + jnp.arange(seq - keep, seq)) % size
    cached_key.value = cached_key.value.at[:, slots].set(k[:, seq - keep:])
    cached_value.value = cached_value.value.at[:, slots].set(v[:, seq - keep:])
    cached_segment.value = cached_segment.value.at[:, slots].set(segment_ids[:, seq - keep:])
    cached_index.value = cached_index.value.at[:, slots].set(q_index[:, seq - keep:])
    return keys, values, q_index, k_index, k_segment
