import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lm import model as model_lib
from lm.attention import document_causal_mask


def _model(**overrides):
  config = tiny.get_config().model
  for k, v in overrides.items():
    config[k] = v
  return model_lib.from_config(config), config


def _inputs(batch=2, seq=16, vocab=512, seed=0):
  tokens = jax.random.randint(jax.random.PRNGKey(seed), (batch, seq), 0, vocab)
  segment_ids = jnp.ones((batch, seq), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  return tokens, segment_ids, positions


def test_logits_shape_and_dtype():
  model, cfg = _model()
  tokens, seg, pos = _inputs()
  params = model.init(jax.random.PRNGKey(0), tokens, seg, pos)["params"]
  logits = model.apply({"params": params}, tokens, seg, pos)
  assert logits.shape == (2, 16, cfg.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


def test_every_parameter_has_logical_axis_names():
  model, cfg = _model(tie_embeddings=False)
  tokens, seg, pos = _inputs()
  boxed = model.init(jax.random.PRNGKey(0), tokens, seg, pos)["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim and all(isinstance(n, str) for n in leaf.names)
  names = {p.names for p in leaves}
  assert ("layers", "embed", "kv_heads", "head_dim") in names  # scanned GQA key/value kernels
  assert ("embed", "vocab") in names  # untied output projection
  key = boxed["blocks"]["attention"]["key"].value
  assert key.shape == (cfg.num_layers, cfg.d_model, cfg.num_kv_heads, cfg.head_dim)


def test_tied_embeddings_have_no_output_matrix():
  tied, _ = _model(tie_embeddings=True)
  untied, cfg = _model(tie_embeddings=False)
  tokens, seg, pos = _inputs()
  count = lambda m: sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(m.init(jax.random.PRNGKey(0), tokens, seg, pos))))
  assert count(untied) - count(tied) == cfg.vocab_size * cfg.d_model


def test_document_causal_mask():
  mask = np.asarray(document_causal_mask(jnp.array([[1, 1, 2, 2, 0]])))[0, 0]
  expected = np.array([
      [1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 1, 0, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 1],
  ], bool)
  np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_attention_never_crosses_documents_and_is_causal(num_kv_heads):
  model, cfg = _model(num_kv_heads=num_kv_heads)
  a = jax.random.randint(jax.random.PRNGKey(1), (10,), 0, cfg.vocab_size)
  b = jax.random.randint(jax.random.PRNGKey(2), (6,), 0, cfg.vocab_size)
  b_other = jax.random.randint(jax.random.PRNGKey(3), (6,), 0, cfg.vocab_size)
  seg = jnp.array([[1] * 10 + [2] * 6])
  pos = jnp.array([list(range(10)) + list(range(6))])
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32), seg, pos)["params"]
  packed = model.apply({"params": params}, jnp.concatenate([a, b])[None], seg, pos)
  swapped = model.apply({"params": params}, jnp.concatenate([a, b_other])[None], seg, pos)
  # Document 1's logits do not see document 2, whatever it holds.
  np.testing.assert_allclose(packed[0, :10], swapped[0, :10], rtol=1e-5, atol=1e-5)
  # Document 2 packed after document 1 gives the same logits as document 2 alone.
  alone = model.apply({"params": params}, b[None], jnp.ones((1, 6), jnp.int32), jnp.arange(6)[None])
  np.testing.assert_allclose(packed[0, 10:], alone[0], rtol=1e-4, atol=1e-4)
  # Causality: changing the last token of document 1 leaves earlier logits unchanged.
  changed = jnp.concatenate([a.at[9].set((a[9] + 1) % cfg.vocab_size), b])[None]
  later = model.apply({"params": params}, changed, seg, pos)
  np.testing.assert_allclose(packed[0, :9], later[0, :9], rtol=1e-5, atol=1e-5)
  assert not np.allclose(packed[0, 9], later[0, 9])
