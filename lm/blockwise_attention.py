"""Memory-efficient (FlashAttention-style) attention in pure JAX.

Queries and keys are cut into blocks; the softmax is computed online over key blocks, so neither the forward nor the
backward pass ever holds more than one [block, block] tile of logits per head. The backward pass is written by hand
(jax.custom_vjp): it recomputes each tile of probabilities from the per-row log-sum-exp saved by the forward pass,
instead of letting autodiff through the loops store every tile. The only residuals are the inputs, the output and that
float32 log-sum-exp.

Masking is described by absolute positions and document ids rather than by a mask array, so the same function serves
training over packed rows (q_index = k_index = positions in the row) and decoding against a key/value cache (q_len 1,
keys = the whole cache, unwritten slots excluded by causality).

Tiles that no query/key pair of the batch may attend (above the causal diagonal, outside the window) are skipped with
lax.cond; under vmap the cond turns into a select and the tile is computed and then discarded, which stays correct.
"""

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


class _Static(NamedTuple):
  """Hashable python-level options, passed to custom_vjp as one non-differentiable argument."""

  causal: bool
  window: int
  softcap: float
  block_q: int
  block_k: int
  q_len: int
  k_len: int


def blockwise_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, q_index: jnp.ndarray, k_index: jnp.ndarray,
                        q_segment: jnp.ndarray, k_segment: jnp.ndarray, *, causal: bool, window: int,
                        alibi_slopes: Optional[jnp.ndarray], softcap: float, block_size: int) -> jnp.ndarray:
  """Grouped-query softmax attention computed block by block, with a memory-efficient backward pass.

  Per head h, query t and key s the logit is (q . k) / sqrt(head_dim) in float32, soft-capped to
  softcap * tanh(logit / softcap) when softcap > 0, minus alibi_slopes[h] * |q_index[t] - k_index[s]| when slopes are
  given. Key s is allowed for query t iff q_segment[t] == k_segment[s], and k_index[s] <= q_index[t] when causal, and
  |q_index[t] - k_index[s]| < window when window > 0. A query with no allowed key outputs zeros.

  Args:
    q: [batch, q_len, num_heads, head_dim] float32 or bfloat16.
    k, v: [batch, k_len, num_kv_heads, head_dim], dtype of `q`; num_heads is a multiple of num_kv_heads.
    q_index: [batch, q_len] int32 absolute position of each query.
    k_index: [batch, k_len] int32 absolute position of each key.
    q_segment: [batch, q_len] int32 document id of each query.
    k_segment: [batch, k_len] int32 document id of each key.
    causal: python bool; whether a query may only see keys at earlier-or-equal positions.
    window: python int; 0 for no limit, else a key must satisfy |q_index - k_index| < window.
    alibi_slopes: None, or [num_heads] float32 ALiBi slopes (treated as constants: they get no gradient).
    softcap: python float; 0 disables the tanh soft-capping of logits.
    block_size: python int; length of query and key blocks (shorter when a sequence is shorter).

  Returns:
    [batch, q_len, num_heads, head_dim], dtype of `q`.
  """
  batch, q_len, num_heads, head_dim = q.shape
  _, k_len, num_kv_heads, _ = k.shape
  if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
    raise ValueError(f"incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
  if num_heads % num_kv_heads:
    raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
  if q_index.shape != (batch, q_len) or q_segment.shape != (batch, q_len):
    raise ValueError(f"q_index {q_index.shape} and q_segment {q_segment.shape} must be {(batch, q_len)}")
  if k_index.shape != (batch, k_len) or k_segment.shape != (batch, k_len):
    raise ValueError(f"k_index {k_index.shape} and k_segment {k_segment.shape} must be {(batch, k_len)}")
  if block_size <= 0 or window < 0 or softcap < 0:
    raise ValueError(f"need block_size > 0, window >= 0, softcap >= 0; got {block_size}, {window}, {softcap}")
  if alibi_slopes is not None:
    alibi_slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(num_kv_heads, num_heads // num_kv_heads)
  static = _Static(causal=bool(causal), window=int(window), softcap=float(softcap),
                   block_q=min(int(block_size), q_len), block_k=min(int(block_size), k_len), q_len=q_len, k_len=k_len)
  # Query heads are grouped under the key/value head they share, so k and v are never repeated.
  q = q.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)
  out = _attention(static, q, k, v, q_index, k_index, q_segment, k_segment, alibi_slopes)
  return out.reshape(batch, q_len, num_heads, head_dim)


def _to_blocks(x: jnp.ndarray, axis: int, block: int) -> jnp.ndarray:
  """Zero-pads `axis` to a multiple of `block`, splits it into blocks and moves the block count to the front."""
  pad = -x.shape[axis] % block
  x = jnp.pad(x, [(0, pad) if a == axis else (0, 0) for a in range(x.ndim)])
  x = x.reshape(x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _from_blocks(x: jnp.ndarray, axis: int, length: int) -> jnp.ndarray:
  """Inverse of _to_blocks: x holds the block count in front and the block at `axis` + 1; cuts padding to `length`."""
  x = jnp.moveaxis(x, 0, axis)
  x = x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])
  return jax.lax.slice_in_dim(x, 0, length, axis=axis)


class _Blocks(NamedTuple):
  """Inputs split into blocks along the sequence: leading axis = block number."""

  q: jnp.ndarray  # [num_q_blocks, batch, block_q, kv_heads, group, head_dim]
  q_index: jnp.ndarray  # [num_q_blocks, batch, block_q]
  q_segment: jnp.ndarray  # [num_q_blocks, batch, block_q]
  q_valid: jnp.ndarray  # [num_q_blocks, block_q] bool; False on padding
  q_lo: jnp.ndarray  # [num_q_blocks] smallest valid q_index of the block over the batch
  q_hi: jnp.ndarray  # [num_q_blocks] largest valid q_index of the block over the batch
  k: jnp.ndarray  # [num_k_blocks, batch, block_k, kv_heads, head_dim]
  v: jnp.ndarray  # [num_k_blocks, batch, block_k, kv_heads, head_dim]
  k_index: jnp.ndarray  # [num_k_blocks, batch, block_k]
  k_segment: jnp.ndarray  # [num_k_blocks, batch, block_k]
  k_valid: jnp.ndarray  # [num_k_blocks, block_k] bool
  k_lo: jnp.ndarray  # [num_k_blocks]
  k_hi: jnp.ndarray  # [num_k_blocks]


def _index_bounds(index: jnp.ndarray, valid: jnp.ndarray):
  """index: [num_blocks, batch, block], valid: [num_blocks, block] -> ([num_blocks], [num_blocks]) min / max."""
  info = jnp.iinfo(index.dtype)
  valid = valid[:, None, :]
  return (jnp.min(jnp.where(valid, index, info.max), axis=(1, 2)),
          jnp.max(jnp.where(valid, index, info.min), axis=(1, 2)))


def _split(static: _Static, q, k, v, q_index, k_index, q_segment, k_segment) -> _Blocks:
  """Pads and splits the sequence axes of all inputs into blocks (q already grouped by key/value head)."""
  bq, bk = static.block_q, static.block_k
  q_valid = _to_blocks(jnp.ones((static.q_len,), jnp.bool_), 0, bq)
  k_valid = _to_blocks(jnp.ones((static.k_len,), jnp.bool_), 0, bk)
  q_index, k_index = _to_blocks(q_index, 1, bq), _to_blocks(k_index, 1, bk)
  q_lo, q_hi = _index_bounds(q_index, q_valid)
  k_lo, k_hi = _index_bounds(k_index, k_valid)
  return _Blocks(q=_to_blocks(q, 1, bq), q_index=q_index, q_segment=_to_blocks(q_segment, 1, bq), q_valid=q_valid,
                 q_lo=q_lo, q_hi=q_hi, k=_to_blocks(k, 1, bk), v=_to_blocks(v, 1, bk), k_index=k_index,
                 k_segment=_to_blocks(k_segment, 1, bk), k_valid=k_valid, k_lo=k_lo, k_hi=k_hi)


def _tile_needed(static: _Static, q_lo, q_hi, k_lo, k_hi) -> Optional[jnp.ndarray]:
  """Scalar bool: whether the tile of a query block and a key block may hold an allowed pair anywhere in the batch.

  Looks only at the index bounds of the two blocks (document ids are not considered); None when no option can rule
  a tile out, so every tile is computed without a cond.
  """
  needed = None
  if static.causal:
    needed = k_lo <= q_hi
  if static.window:
    in_window = (k_lo - q_hi < static.window) & (q_lo - k_hi < static.window)
    needed = in_window if needed is None else needed & in_window
  return needed


def _maybe_skip(needed, compute, carry, *operands):
  """compute(carry, *operands) if the tile is needed, else carry unchanged."""
  if needed is None:
    return compute(carry, *operands)
  return jax.lax.cond(needed, compute, lambda c, *_: c, carry, *operands)


def _tile_scores(static: _Static, q, k, q_index, k_index, q_segment, k_segment, q_valid, k_valid, slopes):
  """Logits and mask of one tile.

  Args:
    q: [batch, block_q, kv_heads, group, head_dim]; k: [batch, block_k, kv_heads, head_dim].
    q_index, q_segment: [batch, block_q]; k_index, k_segment: [batch, block_k].
    q_valid: [block_q] bool; k_valid: [block_k] bool.
    slopes: None or [kv_heads, group] float32.

  Returns:
    scores: [batch, kv_heads, group, block_q, block_k] float32, unmasked.
    allowed: [batch, 1, 1, block_q, block_k] bool.
    tanh: [batch, kv_heads, group, block_q, block_k] float32 tanh of the scaled logits when soft-capping, else None
      (the backward pass needs it for the chain rule).
  """
  scores = jnp.einsum("bqkgd,btkd->bkgqt", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  tanh = None
  if static.softcap:
    tanh = jnp.tanh(scores / static.softcap)
    scores = static.softcap * tanh
  distance = q_index[:, :, None] - k_index[:, None, :]  # [batch, block_q, block_k]
  if slopes is not None:
    scores = scores - slopes[None, :, :, None, None] * jnp.abs(distance).astype(jnp.float32)[:, None, None]
  allowed = (q_segment[:, :, None] == k_segment[:, None, :]) & q_valid[None, :, None] & k_valid[None, None, :]
  if static.causal:
    allowed &= distance >= 0
  if static.window:
    allowed &= jnp.abs(distance) < static.window
  return scores, allowed[:, None, None], tanh


def _forward(static: _Static, q, k, v, q_index, k_index, q_segment, k_segment, slopes):
  """Returns out [batch, q_len, kv_heads, group, head_dim] (dtype of q), lse [batch, kv_heads, group, q_len] float32.

  Rows without any allowed key get out = 0 and lse = 0 (any finite value works: their probabilities are masked).
  """
  blocks = _split(static, q, k, v, q_index, k_index, q_segment, k_segment)
  batch, _, kv_heads, group, _ = q.shape
  stats_shape = (batch, kv_heads, group, static.block_q)

  def query_block(xs):
    qb, qib, qsb, qvb, q_lo, q_hi = xs

    def tile(carry, kb, vb, kib, ksb, kvb):
      m, l, acc = carry
      scores, allowed, _ = _tile_scores(static, qb, kb, qib, kib, qsb, ksb, qvb, kvb, slopes)
      scores = jnp.where(allowed, scores, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
      # While a row has seen no allowed key its max is -inf; shifting by 0 instead keeps exp() free of inf - inf.
      m_shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(scores - m_shift[..., None])
      correction = jnp.exp(m - m_shift)
      l = correction * l + jnp.sum(p, axis=-1)
      pv = jnp.einsum("bkgqt,btkd->bqkgd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
      acc = jnp.moveaxis(correction, 3, 1)[..., None] * acc + pv
      return m_new, l, acc

    def key_step(carry, ys):
      kb, vb, kib, ksb, kvb, k_lo, k_hi = ys
      return _maybe_skip(_tile_needed(static, q_lo, q_hi, k_lo, k_hi), tile, carry, kb, vb, kib, ksb, kvb), None

    init = (jnp.full(stats_shape, -jnp.inf, jnp.float32), jnp.zeros(stats_shape, jnp.float32),
            jnp.zeros(qb.shape, jnp.float32))
    (m, l, acc), _ = jax.lax.scan(key_step, init, (blocks.k, blocks.v, blocks.k_index, blocks.k_segment,
                                                   blocks.k_valid, blocks.k_lo, blocks.k_hi))
    nonempty = l > 0
    safe_l = jnp.where(nonempty, l, 1.0)
    out = jnp.where(jnp.moveaxis(nonempty, 3, 1)[..., None], acc / jnp.moveaxis(safe_l, 3, 1)[..., None], 0.0)
    lse = jnp.where(nonempty, m + jnp.log(safe_l), 0.0)
    return out.astype(q.dtype), lse

  out, lse = jax.lax.map(query_block, (blocks.q, blocks.q_index, blocks.q_segment, blocks.q_valid, blocks.q_lo,
                                       blocks.q_hi))
  return _from_blocks(out, 1, static.q_len), _from_blocks(lse, 3, static.q_len)


def _tile_grad_scores(static: _Static, qb, kb, vb, dob, lseb, deltab, qib, kib, qsb, ksb, qvb, kvb, slopes):
  """Recomputes one tile's probabilities and the gradient w.r.t. its scaled (pre-softcap) logits.

  Shapes as in _tile_scores; dob: [batch, block_q, kv_heads, group, head_dim]; lseb, deltab:
  [batch, kv_heads, group, block_q] float32. Returns p and ds, both [batch, kv_heads, group, block_q, block_k] float32.
  """
  scores, allowed, tanh = _tile_scores(static, qb, kb, qib, kib, qsb, ksb, qvb, kvb, slopes)
  p = jnp.where(allowed, jnp.exp(scores - lseb[..., None]), 0.0)
  dp = jnp.einsum("bqkgd,btkd->bkgqt", dob, vb, preferred_element_type=jnp.float32)
  ds = p * (dp - deltab[..., None])
  if tanh is not None:
    ds = ds * (1.0 - jnp.square(tanh))
  return p, ds


def _backward(static: _Static, residuals, d_out):
  q, k, v, q_index, k_index, q_segment, k_segment, slopes, out, lse = residuals
  scale = 1.0 / math.sqrt(q.shape[-1])
  # delta = rowsum(dO * O) = sum_s p_s dp_s, the softmax Jacobian's correction term, one value per query row.
  delta = jnp.einsum("bqkgd,bqkgd->bkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))
  blocks = _split(static, q, k, v, q_index, k_index, q_segment, k_segment)
  d_out_blocks = _to_blocks(d_out, 1, static.block_q)
  lse_blocks, delta_blocks = _to_blocks(lse, 3, static.block_q), _to_blocks(delta, 3, static.block_q)
  q_xs = (blocks.q, d_out_blocks, lse_blocks, delta_blocks, blocks.q_index, blocks.q_segment, blocks.q_valid,
          blocks.q_lo, blocks.q_hi)
  k_xs = (blocks.k, blocks.v, blocks.k_index, blocks.k_segment, blocks.k_valid, blocks.k_lo, blocks.k_hi)

  # dq: for each query block, accumulate over key blocks.
  def dq_block(xs):
    qb, dob, lseb, deltab, qib, qsb, qvb, q_lo, q_hi = xs

    def tile(dq, kb, vb, kib, ksb, kvb):
      _, ds = _tile_grad_scores(static, qb, kb, vb, dob, lseb, deltab, qib, kib, qsb, ksb, qvb, kvb, slopes)
      return dq + jnp.einsum("bkgqt,btkd->bqkgd", ds.astype(k.dtype), kb, preferred_element_type=jnp.float32)

    def key_step(dq, ys):
      kb, vb, kib, ksb, kvb, k_lo, k_hi = ys
      return _maybe_skip(_tile_needed(static, q_lo, q_hi, k_lo, k_hi), tile, dq, kb, vb, kib, ksb, kvb), None

    dq, _ = jax.lax.scan(key_step, jnp.zeros(qb.shape, jnp.float32), k_xs)
    return (dq * scale).astype(q.dtype)

  # dk, dv: for each key block, accumulate over query blocks (summing over the query heads of each group).
  def dkv_block(xs):
    kb, vb, kib, ksb, kvb, k_lo, k_hi = xs

    def tile(carry, qb, dob, lseb, deltab, qib, qsb, qvb):
      dk, dv = carry
      p, ds = _tile_grad_scores(static, qb, kb, vb, dob, lseb, deltab, qib, kib, qsb, ksb, qvb, kvb, slopes)
      dv = dv + jnp.einsum("bkgqt,bqkgd->btkd", p.astype(d_out.dtype), dob, preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("bkgqt,bqkgd->btkd", ds.astype(q.dtype), qb, preferred_element_type=jnp.float32)
      return dk, dv

    def query_step(carry, ys):
      qb, dob, lseb, deltab, qib, qsb, qvb, q_lo, q_hi = ys
      needed = _tile_needed(static, q_lo, q_hi, k_lo, k_hi)
      return _maybe_skip(needed, tile, carry, qb, dob, lseb, deltab, qib, qsb, qvb), None

    zeros = jnp.zeros(kb.shape, jnp.float32)
    (dk, dv), _ = jax.lax.scan(query_step, (zeros, zeros), q_xs)
    return (dk * scale).astype(k.dtype), dv.astype(v.dtype)

  dq = _from_blocks(jax.lax.map(dq_block, q_xs), 1, static.q_len)
  dk, dv = jax.lax.map(dkv_block, k_xs)
  dk, dv = _from_blocks(dk, 1, static.k_len), _from_blocks(dv, 1, static.k_len)
  # Positions, document ids and ALiBi slopes are treated as constants.
  return dq, dk, dv, None, None, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(static, q, k, v, q_index, k_index, q_segment, k_segment, slopes):
  """q: [batch, q_len, kv_heads, group, head_dim] -> [batch, q_len, kv_heads, group, head_dim], dtype of q."""
  return _forward(static, q, k, v, q_index, k_index, q_segment, k_segment, slopes)[0]


def _attention_fwd(static, q, k, v, q_index, k_index, q_segment, k_segment, slopes):
  out, lse = _forward(static, q, k, v, q_index, k_index, q_segment, k_segment, slopes)
  return out, (q, k, v, q_index, k_index, q_segment, k_segment, slopes, out, lse)


_attention.defvjp(_attention_fwd, _backward)
