"""Position information: rotary embeddings (RoPE) and ALiBi slopes.

RoPE rotates queries and keys by their position in the document; positions come from the
batch (they restart at 0 in every packed document), so a document's encoding does not
depend on where it landed in the packed row. ALiBi adds -slope * distance to attention
logits (applied by `lm.attention`). Learned absolute positions are a table in `lm.model`.
"""

import math

import jax.numpy as jnp
import numpy as np


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, theta: float) -> jnp.ndarray:
  """Rotates pairs of channels of `x` by position-dependent angles.

  Args:
    x: [batch, seq, heads, head_dim] queries or keys (head_dim even).
    positions: [batch, seq] int32 position of each token within its document.
    theta: base wavelength.

  Returns:
    [batch, seq, heads, head_dim], dtype of `x`; the rotation is computed in float32.
  """
  head_dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [b, s, 1, head_dim/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  # Half-split layout: channel i pairs with channel i + head_dim/2.
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """[num_heads] float32 ALiBi slopes: the geometric sequence 2^(-8i/n), interleaved when n is not a power of 2."""

  def power_of_two(n):
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

  closest = 2 ** math.floor(math.log2(num_heads))
  slopes = power_of_two(closest)
  if closest < num_heads:
    slopes += power_of_two(2 * closest)[0::2][:num_heads - closest]
  return np.asarray(slopes, np.float32)
