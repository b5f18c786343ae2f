"""Rotary position embeddings (RoPE) computed from explicit per-token positions.

Positions come from the batch (they restart at 0 in every packed document), so a
document's encoding does not depend on where it landed in the packed row.
"""

import jax.numpy as jnp


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
