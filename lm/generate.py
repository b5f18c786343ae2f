"""Decoding: the KV cache, and sampling continuations of a prompt (greedy, temperature, top-k).

`init_cache` and `decode` run the model incrementally: a prompt is written into the cache
in one call (prefill), then each new token costs one call over the cached keys/values.
`sample` is the simple fixed-window sampler used at the end of training; it recomputes
the whole window for each token, so its one compiled step serves every position.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def init_cache(model: nn.Module, batch_size: int, max_len: int) -> Any:
  """Zeroed KV cache of `model` for `batch_size` rows of up to `max_len` tokens (shapes only, no params built).

  Per layer: "key"/"value" [num_groups, batch, slots, num_kv_heads, head_dim] in compute
  dtype, "segment_ids" and "positions" [num_groups, batch, slots] and the write "index"
  [num_groups]; slots = max_len for global layers, min(window, max_len) for local ones.
  The caller keeps the tokens decoded in total within max_len (inside jit, a write past the end
  cannot raise).

  Raises:
    ValueError: max_len exceeds the model's context length, model.max_seq_len.
  """
  if max_len > model.cfg.max_seq_len:
    raise ValueError(f"a KV cache of {max_len} tokens exceeds model.max_seq_len ({model.cfg.max_seq_len})")
  tokens = jnp.zeros((batch_size, max_len), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch_size, max_len))
  segment_ids = jnp.ones_like(tokens)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, segment_ids, positions, decode=True))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def cached_length(cache: Any) -> jax.Array:
  """int32 scalar: tokens already written into `cache` (the position of the next one)."""
  return cache["blocks"]["layer_0"]["attention"]["index"][0]


def decode(model: nn.Module, params: Any, cache: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
  """Runs `tokens` [batch, t] int32 through the cache: they continue the one document of each row.

  Their positions are cached_length(cache) .. + t - 1, so a prompt can be written in one call
  (prefill) or in chunks, and then one token per call.

  Returns:
    logits [batch, t, vocab] float32 (the same as a full forward pass over the whole prefix)
    and the updated cache.
  """
  start = cached_length(cache)
  batch, length = tokens.shape
  positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
  (logits, _), mutated = model.apply({"params": params, "cache": cache}, tokens, jnp.ones_like(tokens), positions,
                                     decode=True, mutable=["cache"])
  return logits, mutated["cache"]


def make_next_token_fn(forward: Callable, temperature: float, top_k: int) -> Callable:
  """(params, tokens [batch, window], length, rng) -> next token [batch] int32, for jax.jit.

  `forward(params, inputs, segment_ids, positions) -> logits [batch, window, vocab]`; the
  token is drawn from the logits at position `length - 1`.
  """

  def next_token(params, tokens, length, rng):
    batch, window = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(window, dtype=jnp.int32), (batch, window))
    # One document per row; the causal mask keeps the not-yet-written tail out of view.
    segment_ids = jnp.ones_like(tokens)
    logits = forward(params, tokens, segment_ids, positions)
    logits = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)  # [batch, vocab]
    if temperature == 0.0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k > 0:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)

  return next_token


def sample(next_token: Callable, params: Any, prompt: list[int], *, window: int, batch_size: int,
           max_new_tokens: int, eos_id: int, rng: jax.Array, put: Callable[[np.ndarray], Any]) -> list[list[int]]:
  """Samples `batch_size` continuations of `prompt` (independent draws).

  Args:
    next_token: jitted function from `make_next_token_fn`.
    window: the fixed token window; generation stops when it is full.
    put: places a [batch, window] host array on the devices (with the batch sharding).

  Returns:
    `batch_size` lists of new token ids, each ending before EOS if EOS was drawn.
  """
  if not prompt or len(prompt) >= window:
    raise ValueError(f"prompt must have 1 to {window - 1} tokens, got {len(prompt)}")
  tokens = np.zeros((batch_size, window), np.int32)
  tokens[:, :len(prompt)] = prompt
  done = np.zeros(batch_size, bool)
  length = len(prompt)
  while length < min(window, len(prompt) + max_new_tokens) and not done.all():
    rng, step_rng = jax.random.split(rng)
    new = np.asarray(jax.device_get(next_token(params, put(tokens), length, step_rng)))
    tokens[:, length] = np.where(done, eos_id, new)
    done |= new == eos_id
    length += 1
  outputs = []
  for row in tokens[:, len(prompt):length].tolist():
    outputs.append(row[:row.index(eos_id)] if eos_id in row else row)
  return outputs
