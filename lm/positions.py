"""Position information: rotary embeddings (RoPE) and ALiBi slopes.

RoPE rotates queries and keys by their position in the document; positions come from the
batch (they restart at 0 in every packed document), so a document's encoding does not
depend on where it landed in the packed row. For context extension the rotation
frequencies can be rescaled (`rope_frequencies`): linear position interpolation, NTK-aware
base scaling, YaRN (per-band blend plus an attention temperature) and the Llama 3.1 rule. ALiBi adds -slope * distance to attention
logits (applied by `lm.attention`). Learned absolute positions are a table in `lm.model`.
"""

import math

import jax.numpy as jnp
import numpy as np


ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "llama3")


def rope_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                     original_max_seq_len: int = 2048, yarn_beta_fast: float = 32.0, yarn_beta_slow: float = 1.0,
                     llama3_low_frequency_factor: float = 1.0,
                     llama3_high_frequency_factor: float = 4.0) -> tuple[np.ndarray, float]:
  """The inverse frequencies of RoPE's channel pairs and the factor queries and keys are multiplied by.

  With s = `factor` (the context is to grow s times; s = 1 gives plain RoPE for every method) and
  plain frequencies f_i = theta^(-2i/d):
    linear: f_i / s (position interpolation: positions are squeezed into the trained range).
    ntk:    plain RoPE with base theta * s^(d/(d-2)) ("NTK-aware": high frequencies barely move,
            the lowest is interpolated by s).
    yarn:   each pair is interpolated (f_i / s) or kept (f_i) by how many turns r_i it makes over
            `original_max_seq_len` L: kept when r_i > beta_fast, interpolated when r_i < beta_slow,
            a linear ramp over (integer-rounded) pair indices between; queries and keys are both
            multiplied by 0.1 ln s + 1, so the logits by its square (the attention temperature).
    llama3: wavelengths shorter than L / high_frequency_factor are kept, longer than
            L / low_frequency_factor are divided by s, and between them blended by
            (L / wavelength - low) / (high - low).

  Returns:
    (inv_freq [head_dim / 2] float32, attention_factor float).
  """
  exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
  plain = 1.0 / theta ** exponents
  attention_factor = 1.0
  if scaling == "none" or factor == 1.0:
    inv_freq = plain
  elif scaling == "linear":
    inv_freq = plain / factor
  elif scaling == "ntk":
    inv_freq = 1.0 / (theta * factor ** (head_dim / (head_dim - 2))) ** exponents
  elif scaling == "yarn":
    # Pair index at which a pair makes `turns` rotations over L: solves L * f_i / (2 pi) = turns for i.
    def pair_index(turns):
      return head_dim * math.log(original_max_seq_len / (turns * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(pair_index(yarn_beta_fast)), 0)
    high = min(math.ceil(pair_index(yarn_beta_slow)), head_dim - 1)
    if high == low:
      high += 0.001  # a one-index band: a step, not a division by zero
    interpolated = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    inv_freq = plain * (1.0 - interpolated) + plain / factor * interpolated
    attention_factor = 0.1 * math.log(factor) + 1.0
  elif scaling == "llama3":
    wavelength = 2 * math.pi / plain
    low_band, high_band = original_max_seq_len / llama3_low_frequency_factor, original_max_seq_len / llama3_high_frequency_factor
    blend = (original_max_seq_len / wavelength - llama3_low_frequency_factor) / (
        llama3_high_frequency_factor - llama3_low_frequency_factor)
    inv_freq = np.where(wavelength < high_band, plain,
                        np.where(wavelength > low_band, plain / factor, (1 - blend) * plain / factor + blend * plain))
  else:
    raise ValueError(f"unknown RoPE scaling {scaling!r}; expected one of {', '.join(ROPE_SCALINGS)}")
  return inv_freq.astype(np.float32), float(attention_factor)


def config_frequencies(m) -> tuple[np.ndarray, float]:
  """`rope_frequencies` of a `config.model`."""
  return rope_frequencies(m.head_dim, m.rope_theta, m.rope_scaling, m.rope_scaling_factor, m.rope_original_max_seq_len,
                          m.rope_yarn_beta_fast, m.rope_yarn_beta_slow, m.rope_llama3_low_frequency_factor,
                          m.rope_llama3_high_frequency_factor)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray, attention_factor: float = 1.0) -> jnp.ndarray:
  """Rotates pairs of channels of `x` by position-dependent angles.

  Args:
    x: [batch, seq, heads, head_dim] queries or keys (head_dim even).
    positions: [batch, seq] int32 position of each token within its document.
    inv_freq: [head_dim / 2] float32 angle per position of each channel pair (`rope_frequencies`).
    attention_factor: the rotated vectors are multiplied by this (YaRN's temperature; 1 otherwise).

  Returns:
    [batch, seq, heads, head_dim], dtype of `x`; the rotation is computed in float32.
  """
  angles = positions.astype(jnp.float32)[:, :, None, None] * jnp.asarray(inv_freq)  # [b, s, 1, head_dim/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  if attention_factor != 1.0:
    sin, cos = sin * attention_factor, cos * attention_factor
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
