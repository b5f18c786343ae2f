"""Batched generation with the KV cache (lm.generate.Generator), sampling filters, and the command line."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lm import generate
from lm import model as model_lib
from lm import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [[1, 17, 250, 33, 90, 4], [1, 300], [1, 44, 45, 46, 47, 48, 49, 50, 51]]  # padded to 9 tokens


def _model(**overrides):
  """(tiny float32 model with `overrides`, random parameters drawn on the host).

  Every weight is N(0, 0.3^2) (norm scales 1 + that): beyond the init scale, where the tied
  embeddings make the model repeat its last token, which would not tell a right cache from a
  wrong one. Host draws also spare the compile of the init's random numbers.
  """
  config = tiny.get_config()
  for key, value in overrides.items():
    config.model[key] = value
  model = model_lib.from_config(config.model)
  dummy = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, dummy + 1, dummy)["params"])
  rng = np.random.default_rng(0)

  def draw(path, shape):
    offset = 1.0 if "scale" in jax.tree_util.keystr(path) else 0.0
    return jnp.asarray(offset + 0.3 * rng.standard_normal(shape.shape), shape.dtype)

  return model, config, nn.meta.unbox(jax.tree_util.tree_map_with_path(draw, shapes))


def _generator(model, config, on_mesh: bool) -> generate.Generator:
  if not on_mesh:
    return generate.Generator(model)
  return generate.Generator(model, sharding.make_mesh(config.mesh), sharding.rules(config.mesh))


def _greedy_without_cache(model, params, prompts, new_tokens: int) -> list[list[int]]:
  """`new_tokens` argmax tokens per prompt, each from a full forward pass over the whole unpadded prefix.

  The rows are right-aligned in a fixed window (one compile): the causal mask hides the tail after the prefix.
  """
  window = max(len(p) for p in prompts) + new_tokens - 1
  tokens = np.zeros((len(prompts), window), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  positions = np.broadcast_to(np.arange(window, dtype=np.int32), tokens.shape)
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t, jnp.ones_like(t), positions)[0])
  lengths = np.array([len(p) for p in prompts])
  outputs = [[] for _ in prompts]
  for _ in range(new_tokens):
    logits = np.asarray(forward(params, tokens))
    for row, length in enumerate(lengths):
      token = int(np.argmax(logits[row, length - 1]))
      outputs[row].append(token)
      if length < window:
        tokens[row, length] = token
    lengths += 1
  return outputs


@pytest.fixture(scope="module")
def rope():
  """(model, config, params, generator on the 8-device mesh) of the tiny RoPE model."""
  model, config, params = _model()
  return model, config, params, _generator(model, config, on_mesh=True)


def test_greedy_with_the_cache_equals_full_forward_passes(rope):
  model, _, params, generator = rope
  result = generator.generate(params, PROMPTS, max_new_tokens=12, eos_id=None)
  assert result.tokens == _greedy_without_cache(model, params, PROMPTS, 12)
  assert len({tuple(row) for row in result.tokens}) == 3 and len(set(result.tokens[0])) > 3  # not a trivial model
  assert result.prompt_tokens == 17 and result.new_tokens == 36 and result.decode_steps == 11
  again = generator.generate(params, PROMPTS[::-1], max_new_tokens=12, eos_id=None)
  assert again.tokens == result.tokens[::-1]  # rows are independent of each other
  assert generator.num_compiled == 1  # the same batch and lengths reuse the compiled prefill and step


@pytest.mark.parametrize("variant", ["learned", "alibi_local", "none_local", "yarn"])
def test_greedy_equivalence_for_other_positions_and_sliding_windows(variant):
  overrides = {
      "learned": dict(position_embedding="learned", max_seq_len=16),  # 16 < 9 + 12 - 1: the context ends first
      "alibi_local": dict(position_embedding="alibi", attention_pattern=("local", "global"), sliding_window=4),
      "none_local": dict(position_embedding="none", attention_pattern=("local",), sliding_window=3,
                         num_kv_heads=1),
      "yarn": dict(rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_max_seq_len=4),  # decoding scales too
  }[variant]
  model, config, params = _model(**overrides)
  result = _generator(model, config, on_mesh=variant == "learned").generate(params, PROMPTS, max_new_tokens=12,
                                                                           eos_id=None)
  new_tokens = 16 - 9 + 1 if variant == "learned" else 12  # the last token is drawn from a full context
  assert [len(row) for row in result.tokens] == [new_tokens] * 3
  assert result.tokens == _greedy_without_cache(model, params, PROMPTS, new_tokens)


def test_eos_stops_its_row_only(rope):
  _, _, params, generator = rope
  free = generator.generate(params, PROMPTS, max_new_tokens=12, eos_id=None).tokens
  # An EOS id that row r draws first at step k and another row never draws.
  r, k, eos = next((r, k, t) for r, row in enumerate(free) for k, t in enumerate(row)
                   if k >= 2 and t not in row[:k] and any(t not in other for other in free))
  stopped = generator.generate(params, PROMPTS, max_new_tokens=12, eos_id=eos).tokens
  assert stopped[r] == free[r][:k]
  for row, other in zip(stopped, free):
    if eos not in other:
      assert row == other
  # When every row has stopped the loop ends: identical rows (of the same padded length) draw EOS together.
  same = free[2]
  stop = next(k for k, t in enumerate(same) if k >= 1 and t not in same[:k])
  result = generator.generate(params, [PROMPTS[2]] * 3, max_new_tokens=12, eos_id=same[stop])
  assert result.tokens == [same[:stop]] * 3
  assert result.decode_steps == stop + 1  # the steps up to EOS, and the one queued while it reached the host
  assert generator.num_compiled == 1


def test_sampling_with_a_seed_is_reproducible(rope):
  _, _, params, generator = rope
  sampling = generate.Sampling(temperature=1.0, top_k=100, top_p=0.95)
  draws = [generator.generate(params, PROMPTS, max_new_tokens=12, eos_id=None, sampling=sampling, seed=seed).tokens
           for seed in (0, 0, 1)]
  assert draws[0] == draws[1]
  assert draws[0] != draws[2]
  assert draws[0] != generator.generate(params, PROMPTS, max_new_tokens=12, eos_id=None).tokens  # not greedy


def test_top_p_keeps_the_smallest_set_of_most_likely_tokens_reaching_p():
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]))

  def kept(**settings):
    return np.isfinite(np.asarray(generate.filter_logits(logits, generate.Sampling(temperature=1.0, **settings))))

  np.testing.assert_array_equal(kept(top_p=0.5), [[1, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(top_p=0.3), [[1, 0, 0, 0], [0, 0, 0, 1]])  # the most likely always stays
  np.testing.assert_array_equal(kept(top_p=0.95), np.ones((2, 4)))
  np.testing.assert_array_equal(kept(top_k=3), [[1, 1, 1, 0], [0, 1, 1, 1]])
  # Top-p after top-k, on the renormalized probabilities 4/9, 3/9, 2/9.
  np.testing.assert_array_equal(kept(top_k=3, top_p=0.75), [[1, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(top_k=3, top_p=0.8), [[1, 1, 1, 0], [0, 1, 1, 1]])
  scaled = generate.filter_logits(logits, generate.Sampling(temperature=0.5))
  np.testing.assert_allclose(np.asarray(scaled), 2 * np.asarray(logits), rtol=1e-6)


def test_top_k_one_and_tiny_top_p_are_greedy_and_draws_stay_in_the_top_k():
  logits = jax.random.normal(jax.random.PRNGKey(100), (256, 50)) * 3  # not a key the draws use
  greedy = np.asarray(generate.choose_tokens(logits, None, generate.Sampling()))
  np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), axis=-1))
  for seed in range(3):
    rng = jax.random.PRNGKey(seed)
    for sampling in (generate.Sampling(1.0, top_k=1), generate.Sampling(2.0, top_p=1e-6)):
      np.testing.assert_array_equal(np.asarray(generate.choose_tokens(logits, rng, sampling)), greedy)
    draws = np.asarray(generate.choose_tokens(logits, rng, generate.Sampling(1.0, top_k=3)))
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    assert all(d in t for d, t in zip(draws, top3))
    assert (draws != greedy).any()
  for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
    with pytest.raises(ValueError):
      generate.Sampling(**bad)


def test_prompts_are_checked(rope):
  _, config, params, generator = rope
  with pytest.raises(ValueError, match="model.max_seq_len"):
    generator.generate(params, [[1] * (config.model.max_seq_len + 1)], max_new_tokens=1, eos_id=None)
  with pytest.raises(ValueError, match="prompt 2 is empty"):
    generator.generate(params, [[1], []], max_new_tokens=1, eos_id=None)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    generator.generate(params, [[1, config.model.vocab_size]], max_new_tokens=1, eos_id=None)


def test_command_line_continues_each_prompt(trained_run):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  prompts = ["def read_config(path):", "The list type"]
  result = subprocess.run(
      [sys.executable, "-m", "lm.generate", "--run", trained_run, "--step", "300", "--prompt", prompts[0],
       "--prompt", prompts[1], "--max_new_tokens", "16", "--temperature", "0.8", "--top_p", "0.9"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert any(line.startswith(prompts[0]) for line in lines) and any(line.startswith(prompts[1]) for line in lines)
  assert "new tokens" in lines[-1] and "tokens/s" in lines[-1] and "prefill" in lines[-1]


def test_command_line_errors_name_the_problem(tmp_path, capsys, trained_run):
  assert generate.main(["--run", str(tmp_path / "missing"), "--prompt", "x"]) == 2
  assert "missing" in capsys.readouterr().err
  assert generate.main(["--run", trained_run, "--prompt", "word " * 3000]) == 2
  assert "model.max_seq_len" in capsys.readouterr().err
