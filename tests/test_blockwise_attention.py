import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.blockwise_attention import blockwise_attention


def _reference(q, k, v, q_index, k_index, q_segment, k_segment, *, causal, window, alibi_slopes, softcap):
  """Naive attention with the full [q_len, k_len] logits matrix; same semantics as blockwise_attention."""
  batch, q_len, num_heads, head_dim = q.shape
  group = num_heads // k.shape[2]
  k = jnp.repeat(k, group, axis=2).astype(jnp.float32)
  v = jnp.repeat(v, group, axis=2).astype(jnp.float32)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k) / np.sqrt(head_dim)
  if softcap:
    logits = softcap * jnp.tanh(logits / softcap)
  distance = q_index[:, :, None] - k_index[:, None, :]
  if alibi_slopes is not None:
    logits = logits - alibi_slopes[None, :, None, None] * jnp.abs(distance).astype(jnp.float32)[:, None]
  allowed = q_segment[:, :, None] == k_segment[:, None, :]
  if causal:
    allowed &= distance >= 0
  if window:
    allowed &= jnp.abs(distance) < window
  allowed = allowed[:, None]
  weights = jax.nn.softmax(jnp.where(allowed, logits, -1e30), axis=-1)
  weights = jnp.where(jnp.any(allowed, axis=-1, keepdims=True), weights, 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v).astype(q.dtype)


def _self_inputs(seed, batch=2, seq=37, num_heads=4, num_kv_heads=4, head_dim=8, segments=1, dtype=jnp.float32):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (batch, seq, num_heads, head_dim), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (batch, seq, num_kv_heads, head_dim), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (batch, seq, num_kv_heads, head_dim), jnp.float32).astype(dtype)
  index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  if segments == 1:
    segment = jnp.ones((batch, seq), jnp.int32)
  else:
    # Packed rows: documents 1..segments-1 of random lengths, then padding (segment 0) to the end of the row.
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
      cuts = np.sort(rng.choice(np.arange(1, seq), segments - 1, replace=False))
      row = np.zeros(seq, np.int32)
      for doc, (start, end) in enumerate(zip([0, *cuts[:-1]], cuts)):
        row[start:end] = doc + 1
      rows.append(row)
    segment = jnp.asarray(np.stack(rows))
  return q, k, v, index, index, segment, segment, keys[3]


def _slopes(num_heads):
  return jnp.asarray(2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads), jnp.float32)


def _compare(q, k, v, q_index, k_index, q_segment, k_segment, key, *, tol, **options):
  """Checks the output and the vector-Jacobian product w.r.t. q, k, v against the reference."""
  cotangent = jax.random.normal(key, q.shape, jnp.float32).astype(q.dtype)

  @jax.jit
  def out_and_grads(q, k, v):
    # One compiled function per implementation keeps the test fast: compilation dominates at these sizes.
    def run(fn, **kwargs):
      out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, q_index, k_index, q_segment, k_segment, **kwargs), q, k, v)
      return out, pullback(cotangent)

    ref_options = {name: value for name, value in options.items() if name != "block_size"}
    return run(blockwise_attention, **options), run(_reference, **ref_options)

  (out, grads), (expected, expected_grads) = out_and_grads(q, k, v)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32), atol=tol, rtol=tol)
  for name, grad, expected_grad, primal in zip("qkv", grads, expected_grads, (q, k, v)):
    assert grad.shape == primal.shape and grad.dtype == primal.dtype, name
    assert np.isfinite(np.asarray(grad, np.float32)).all(), name
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(expected_grad, np.float32), atol=tol,
                               rtol=tol, err_msg=f"d{name}")


# (causal, window, alibi, softcap, num_heads, num_kv_heads, segments, seq, block_size)
_CASES = [
    (True, 0, False, 0.0, 4, 4, 1, 37, 8),  # q_len not a multiple of the block
    (False, 0, False, 0.0, 4, 4, 1, 37, 8),
    # Windows of 10 with blocks of 8 put some tiles exactly at the edge of the window: the skip test is tight.
    (True, 10, False, 0.0, 4, 2, 1, 37, 8),  # sliding window, grouped-query
    (False, 10, True, 0.0, 4, 1, 1, 37, 8),  # bidirectional window, multi-query, ALiBi
    (True, 0, True, 5.0, 4, 2, 1, 37, 8),
    (False, 0, False, 3.0, 4, 4, 3, 37, 8),  # packed rows with padding, softcap
    (True, 0, False, 0.0, 4, 1, 3, 37, 16),
    (True, 6, True, 2.0, 4, 2, 2, 40, 8),  # everything at once, length a multiple of the block
    (True, 0, True, 0.0, 4, 4, 3, 21, 64),  # block larger than the sequence
]


@pytest.mark.parametrize("causal,window,alibi,softcap,num_heads,num_kv_heads,segments,seq,block_size", _CASES)
def test_matches_reference(causal, window, alibi, softcap, num_heads, num_kv_heads, segments, seq, block_size):
  inputs = _self_inputs(seed=seq + window + segments, seq=seq, num_heads=num_heads, num_kv_heads=num_kv_heads,
                        segments=segments)
  _compare(*inputs, tol=1e-5, causal=causal, window=window, alibi_slopes=_slopes(num_heads) if alibi else None,
           softcap=softcap, block_size=block_size)


@pytest.mark.parametrize("window", [0, 10])
def test_decoding_against_cache(window):
  batch, cache_len, num_heads, num_kv_heads, head_dim = 3, 29, 4, 2, 8
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  q = jax.random.normal(keys[0], (batch, 1, num_heads, head_dim))
  k = jax.random.normal(keys[1], (batch, cache_len, num_kv_heads, head_dim))
  v = jax.random.normal(keys[2], (batch, cache_len, num_kv_heads, head_dim))
  # Each row decodes at its own position; cache slots after it are unwritten and excluded by causality.
  q_index = jnp.array([[0], [13], [28]], jnp.int32)
  k_index = jnp.broadcast_to(jnp.arange(cache_len, dtype=jnp.int32), (batch, cache_len))
  q_segment, k_segment = jnp.ones((batch, 1), jnp.int32), jnp.ones((batch, cache_len), jnp.int32)
  _compare(q, k, v, q_index, k_index, q_segment, k_segment, keys[3], tol=1e-5, causal=True, window=window,
           alibi_slopes=_slopes(num_heads), softcap=0.0, block_size=8)


def test_rows_without_allowed_keys_are_zero():
  q, k, v, q_index, k_index, _, k_segment, key = _self_inputs(seed=3, seq=19, num_heads=2, num_kv_heads=1)
  # Queries of document 7 find no key of their document: zero output, finite (zero) gradients.
  q_segment = k_segment.at[:, 5:12].set(7)
  out = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, q_index, k_index, q_segment, k_segment, causal=True,
                                                    window=0, alibi_slopes=None, softcap=0.0, block_size=4))(q, k, v)
  np.testing.assert_array_equal(np.asarray(out[:, 5:12]), 0.0)
  _compare(q, k, v, q_index, k_index, q_segment, k_segment, key, tol=1e-5, causal=True, window=0,
           alibi_slopes=None, softcap=0.0, block_size=4)


def test_bfloat16():
  inputs = _self_inputs(seed=5, seq=33, num_heads=4, num_kv_heads=2, segments=2, dtype=jnp.bfloat16)
  _compare(*inputs, tol=5e-2, causal=True, window=0, alibi_slopes=_slopes(4), softcap=0.0, block_size=8)


def test_gradient_does_not_materialise_logits():
  seq, head_dim = 4096, 16
  q = jnp.zeros((1, seq, 1, head_dim), jnp.float32)
  index = jnp.arange(seq, dtype=jnp.int32)[None]
  segment = jnp.ones((1, seq), jnp.int32)
  full_logits_bytes = seq * seq * 4

  def temp_bytes(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, index, index, segment, segment))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  blockwise = temp_bytes(lambda *a: blockwise_attention(*a, causal=True, window=0, alibi_slopes=None, softcap=0.0,
                                                        block_size=256))
  naive = temp_bytes(lambda *a: _reference(*a, causal=True, window=0, alibi_slopes=None, softcap=0.0))
  assert blockwise < full_logits_bytes / 8, blockwise
  assert naive > full_logits_bytes, naive
