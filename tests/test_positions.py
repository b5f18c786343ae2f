"""lm.positions: RoPE scaling (linear, NTK-aware, YaRN, Llama 3.1) against the reference formulas."""

import math

import numpy as np
import pytest

from configs import base
from lm import config as config_lib
from lm import positions

HEAD_DIM, THETA = 64, 10000.0
PLAIN = 1.0 / THETA ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)


@pytest.mark.parametrize("scaling", positions.ROPE_SCALINGS)
def test_factor_one_is_plain_rope(scaling):
  inv_freq, attention_factor = positions.rope_frequencies(HEAD_DIM, THETA, scaling, 1.0, original_max_seq_len=256)
  np.testing.assert_allclose(inv_freq, PLAIN, rtol=1e-7)
  assert attention_factor == 1.0


def test_linear_and_ntk_follow_their_formulas():
  inv_freq, factor = positions.rope_frequencies(HEAD_DIM, THETA, "linear", 4.0)
  np.testing.assert_allclose(inv_freq, PLAIN / 4.0, rtol=1e-6)
  assert factor == 1.0
  inv_freq, factor = positions.rope_frequencies(HEAD_DIM, THETA, "ntk", 4.0)
  base = THETA * 4.0 ** (HEAD_DIM / (HEAD_DIM - 2))
  np.testing.assert_allclose(inv_freq, 1.0 / base ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM), rtol=1e-6)
  assert inv_freq[0] == pytest.approx(PLAIN[0])  # the fastest pair is untouched
  assert inv_freq[-1] == pytest.approx(PLAIN[-1] / 4.0, rel=1e-6)  # the slowest is interpolated by s
  assert factor == 1.0


def test_yarn_bands_and_temperature():
  original, s = 256, 4.0
  inv_freq, factor = positions.rope_frequencies(HEAD_DIM, THETA, "yarn", s, original_max_seq_len=original,
                                                yarn_beta_fast=32.0, yarn_beta_slow=1.0)
  turns = original * PLAIN / (2 * math.pi)  # rotations of each pair over the original context
  np.testing.assert_allclose(inv_freq[turns > 32.5], PLAIN[turns > 32.5], rtol=1e-6)  # fast pairs kept
  np.testing.assert_allclose(inv_freq[turns < 0.9], PLAIN[turns < 0.9] / s, rtol=1e-6)  # slow pairs interpolated
  assert np.all(inv_freq <= PLAIN * (1 + 1e-6)) and np.all(inv_freq >= PLAIN / s * (1 - 1e-6))
  assert factor == pytest.approx(0.1 * math.log(s) + 1.0)


def test_llama3_bands():
  original, s = 256, 8.0
  inv_freq, factor = positions.rope_frequencies(HEAD_DIM, THETA, "llama3", s, original_max_seq_len=original,
                                                llama3_low_frequency_factor=1.0, llama3_high_frequency_factor=4.0)
  wavelength = 2 * math.pi / PLAIN
  np.testing.assert_allclose(inv_freq[wavelength < original / 4], PLAIN[wavelength < original / 4], rtol=1e-6)
  np.testing.assert_allclose(inv_freq[wavelength > original], PLAIN[wavelength > original] / s, rtol=1e-6)
  middle = (wavelength >= original / 4) & (wavelength <= original)
  blend = (original / wavelength[middle] - 1.0) / 3.0
  np.testing.assert_allclose(inv_freq[middle], (1 - blend) * PLAIN[middle] / s + blend * PLAIN[middle], rtol=1e-6)
  assert middle.any() and factor == 1.0


@pytest.mark.parametrize("rope_type,fields", [
    ("linear", {}),
    ("yarn", {"beta_fast": 32.0, "beta_slow": 1.0}),
    ("yarn", {"beta_fast": 16.0, "beta_slow": 2.0}),
    ("llama3", {"low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    ("llama3", {"low_freq_factor": 2.0, "high_freq_factor": 8.0}),
])
@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_equal_to_transformers_rope_init_functions(rope_type, fields, factor):
  transformers = pytest.importorskip("transformers")
  rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
  original = 512
  parameters = {"rope_type": rope_type, "rope_theta": THETA, "factor": factor, **fields}
  if rope_type != "linear":
    parameters["original_max_position_embeddings"] = original
  hf = transformers.LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4, head_dim=HEAD_DIM,
                                max_position_embeddings=original * int(factor), rope_parameters=parameters)
  theirs, their_factor = rope_utils.ROPE_INIT_FUNCTIONS[rope_type](hf, device=None)
  ours, our_factor = positions.rope_frequencies(
      HEAD_DIM, THETA, rope_type, factor, original_max_seq_len=original,
      yarn_beta_fast=fields.get("beta_fast", 32.0), yarn_beta_slow=fields.get("beta_slow", 1.0),
      llama3_low_frequency_factor=fields.get("low_freq_factor", 1.0),
      llama3_high_frequency_factor=fields.get("high_freq_factor", 4.0))
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-6)
  assert our_factor == pytest.approx(their_factor, rel=1e-7)


@pytest.mark.parametrize("key,value,message", [
    ("rope_scaling_factor", 0.5, "model.rope_scaling_factor must be >= 1"),
    ("rope_scaling", "dynamic", "model.rope_scaling must be one of none, linear, ntk, yarn, llama3"),
    ("rope_yarn_beta_slow", 64.0, "model.rope_yarn_beta_fast must exceed"),
])
def test_bad_scaling_is_a_config_error(key, value, message):
  config = base.get_config()
  config.model[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config, 1, 1)


def test_scaling_needs_rope():
  config = base.get_config()
  config.model.update(position_embedding="learned", rope_scaling="linear", rope_scaling_factor=2.0)
  with pytest.raises(config_lib.ConfigError, match="scaling applies to RoPE only"):
    config_lib.validate(config, 1, 1)
