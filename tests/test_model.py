import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from lm import attention
from lm import generate
from lm import layers
from lm import mlp
from lm import model as model_lib
from lm import objectives
from lm import positions as positions_lib


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


def _init(model, seq=16, seed=0):
  tokens, seg, pos = _inputs(seq=seq)
  return model.init(jax.random.PRNGKey(seed), tokens, seg, pos)["params"]


def _logits(model, params, tokens, seg=None, pos=None):
  batch, seq = tokens.shape
  seg = jnp.ones((batch, seq), jnp.int32) if seg is None else seg
  pos = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)) if pos is None else pos
  return np.asarray(model.apply({"params": params}, tokens, seg, pos)[0])


# Each attention-affecting option, alone; used by the masking, implementation and KV-cache tests.
VARIANTS = {
    "multi_head": dict(num_kv_heads=4),
    "grouped_query": dict(num_kv_heads=2),
    "multi_query": dict(num_kv_heads=1),
    "local": dict(attention_pattern=("local",), sliding_window=5),
    "local_global": dict(attention_pattern=("local", "global"), sliding_window=5),
    "alibi": dict(position_embedding="alibi"),
    "learned": dict(position_embedding="learned", max_seq_len=64),
    "no_positions": dict(position_embedding="none"),
    "qk_norm": dict(qk_norm=True),
    "softcap": dict(attention_logit_softcap=2.0),
    "post_layernorm_bias": dict(norm_type="layernorm", norm_position="post", use_bias=True),
    "moe": dict(num_experts=4, experts_per_token=2, capacity_factor=8.0),
}


def test_logits_shape_and_dtype():
  model, cfg = _model()
  tokens, seg, pos = _inputs()
  params = _init(model)
  logits, aux = model.apply({"params": params}, tokens, seg, pos)
  assert logits.shape == (2, 16, cfg.vocab_size) and logits.dtype == jnp.float32 and aux == {}
  assert np.isfinite(np.asarray(logits)).all()


def test_every_parameter_has_logical_axis_names():
  model, cfg = _model(tie_embeddings=False, num_experts=4, moe_every=2, attention_pattern=("local", "global"),
                      sliding_window=4)
  tokens, seg, pos = _inputs()
  boxed = model.init(jax.random.PRNGKey(0), tokens, seg, pos)["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
  names = {p.names for p in leaves}
  assert ("layers", "embed", "kv_heads", "head_dim") in names  # scanned GQA key/value kernels
  assert ("embed", "vocab") in names  # untied output projection
  assert ("layers", "expert", "embed", "mlp") in names  # MoE expert kernels
  # Two layers form one scanned group: layer_0 local and dense, layer_1 global and MoE.
  assert set(boxed["blocks"]) == {"layer_0", "layer_1"}
  assert "mlp" in boxed["blocks"]["layer_0"] and "moe" in boxed["blocks"]["layer_1"]
  key = boxed["blocks"]["layer_0"]["attention"]["key"].value
  assert key.shape == (cfg.num_layers // 2, cfg.d_model, cfg.num_kv_heads, cfg.head_dim)


def _count(model):
  """Parameters of `model` from shapes alone (nothing is compiled or allocated)."""
  return sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(jax.eval_shape(lambda: _init(model)))))


def test_tied_embeddings_have_no_output_matrix():
  tied, _ = _model(tie_embeddings=True)
  untied, cfg = _model(tie_embeddings=False)
  assert _count(untied) - _count(tied) == cfg.vocab_size * cfg.d_model


def test_parameter_counts_of_options():
  base, cfg = _model()
  d, f, layers = cfg.d_model, cfg.ffn_dim, cfg.num_layers
  gelu, _ = _model(mlp_activation="gelu")
  assert _count(base) - _count(gelu) == layers * d * f  # SwiGLU has a third (gate) matrix
  learned, _ = _model(position_embedding="learned", max_seq_len=100)
  assert _count(learned) - _count(base) == 100 * d
  post, _ = _model(norm_position="post")
  assert _count(base) - _count(post) == d  # no final norm after post-norm blocks
  layernorm, _ = _model(norm_type="layernorm", use_bias=True, mlp_activation="gelu")
  h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  biases = layers * ((h + 2 * kv) * hd + d + f + d + 2 * d) + d  # q/k/v, out, up, down, 2 norms; final norm
  assert _count(layernorm) - _count(gelu) == biases
  qk, _ = _model(qk_norm=True)
  assert _count(qk) - _count(base) == layers * 2 * hd


def test_document_causal_mask():
  segment_ids, index = jnp.array([[1, 1, 2, 2, 0]]), jnp.arange(5)[None]
  mask = np.asarray(attention.attention_mask(index, index, segment_ids, segment_ids, causal=True, window=0))[0]
  expected = np.array([
      [1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 1, 0, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 1],
  ], bool)
  np.testing.assert_array_equal(mask, expected)


def test_sliding_window_mask():
  index = jnp.arange(6)[None]
  seg = jnp.ones((1, 6), jnp.int32)
  mask = np.asarray(attention.attention_mask(index, index, seg, seg, causal=True, window=3))[0]
  for t in range(6):
    np.testing.assert_array_equal(np.nonzero(mask[t])[0], np.arange(max(0, t - 2), t + 1))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_attention_never_crosses_documents_and_is_causal(variant):
  model, cfg = _model(**VARIANTS[variant])
  a = jax.random.randint(jax.random.PRNGKey(1), (10,), 0, cfg.vocab_size)
  b = jax.random.randint(jax.random.PRNGKey(2), (6,), 0, cfg.vocab_size)
  b_other = jax.random.randint(jax.random.PRNGKey(3), (6,), 0, cfg.vocab_size)
  seg = jnp.array([[1] * 10 + [2] * 6])
  pos = jnp.array([list(range(10)) + list(range(6))])
  params = _init(model)
  packed = _logits(model, params, jnp.concatenate([a, b])[None], seg, pos)
  swapped = _logits(model, params, jnp.concatenate([a, b_other])[None], seg, pos)
  # Document 1's logits do not see document 2, whatever it holds.
  np.testing.assert_allclose(packed[0, :10], swapped[0, :10], rtol=1e-5, atol=1e-5)
  if variant != "moe":  # routing capacity is per row, so MoE outputs may depend on the row's other tokens
    # Document 2 packed after document 1 gives the same logits as document 2 alone.
    alone = _logits(model, params, b[None], jnp.ones((1, 6), jnp.int32), jnp.arange(6)[None])
    np.testing.assert_allclose(packed[0, 10:], alone[0], rtol=1e-4, atol=1e-4)
  # Causality: changing the last token of document 1 leaves earlier logits unchanged.
  changed = jnp.concatenate([a.at[9].set((a[9] + 1) % cfg.vocab_size), b])[None]
  later = _logits(model, params, changed, seg, pos)
  np.testing.assert_allclose(packed[0, :9], later[0, :9], rtol=1e-5, atol=1e-5)
  assert not np.allclose(packed[0, 9], later[0, 9])


def test_sliding_window_hides_tokens_beyond_the_window():
  # Two local layers of window 4: position t sees tokens t-6 .. t (3 back per layer), nothing earlier.
  model, cfg = _model(attention_pattern=("local",), sliding_window=4)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 20), 0, cfg.vocab_size)
  params = _init(model)
  base = _logits(model, params, tokens)
  far = _logits(model, params, tokens.at[0, 5].set((tokens[0, 5] + 1) % cfg.vocab_size))
  np.testing.assert_allclose(base[0, 12:], far[0, 12:], rtol=1e-5, atol=1e-5)  # 12 - 5 = 7 > 6
  assert not np.allclose(base[0, 11], far[0, 11])  # 11 - 5 = 6: still in view
  # With the second layer global, the change reaches every later position.
  mixed, _ = _model(attention_pattern=("local", "global"), sliding_window=4)
  params = _init(mixed)
  base = _logits(mixed, params, tokens)
  far = _logits(mixed, params, tokens.at[0, 5].set((tokens[0, 5] + 1) % cfg.vocab_size))
  assert not np.allclose(base[0, 19], far[0, 19])


def test_rope_is_invariant_to_a_position_offset():
  # (ALiBi and position-free models read no positions; their invariance to where a document
  # sits in the row is checked by test_attention_never_crosses_documents_and_is_causal.)
  model, cfg = _model(position_embedding="rope")
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 12), 0, cfg.vocab_size)
  params = _init(model)
  positions = jnp.arange(12)[None]
  base = _logits(model, params, tokens, pos=positions)
  shifted = _logits(model, params, tokens, pos=positions + 37)
  np.testing.assert_allclose(base, shifted, rtol=1e-4, atol=1e-4)


def test_learned_positions_are_absolute():
  model, cfg = _model(position_embedding="learned", max_seq_len=64)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 12), 0, cfg.vocab_size)
  params = _init(model)
  base = _logits(model, params, tokens, pos=jnp.arange(12)[None])
  shifted = _logits(model, params, tokens, pos=jnp.arange(12)[None] + 37)
  assert not np.allclose(base, shifted, atol=1e-3)


def test_rope_attention_score_depends_only_on_distance():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 16))

  def score(pq, pk):
    inv_freq, _ = positions_lib.rope_frequencies(16, 10000.0)
    rq = positions_lib.apply_rope(q, jnp.array([[pq]]), inv_freq)
    rk = positions_lib.apply_rope(k, jnp.array([[pk]]), inv_freq)
    return float(jnp.sum(rq * rk))

  assert abs(score(7, 3) - score(107, 103)) < 1e-4
  assert abs(score(7, 3) - score(7, 5)) > 1e-3


def test_alibi_slopes_and_distance_penalty():
  np.testing.assert_allclose(positions_lib.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
  assert len(positions_lib.alibi_slopes(12)) == 12
  # Identical keys and values except at distance: the nearer key gets the larger weight.
  q = jnp.ones((1, 1, 1, 4))
  k = jnp.ones((1, 3, 1, 4))
  v = jnp.eye(3)[None, :, None, :].astype(jnp.float32)[..., :3]
  v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, 1)))
  out = attention.xla_attention(q, k, v, jnp.array([[2]]), jnp.arange(3)[None], jnp.ones((1, 1), jnp.int32),
                                jnp.ones((1, 3), jnp.int32), causal=True, window=0,
                                alibi_slopes=np.array([0.5], np.float32), softcap=0.0)
  weights = np.asarray(out[0, 0, 0, :3])
  np.testing.assert_allclose(weights, np.exp([-1.0, -0.5, 0.0]) / np.exp([-1.0, -0.5, 0.0]).sum(), rtol=1e-5)


def test_qk_norm_makes_attention_invariant_to_query_and_key_scale():
  for qk_norm in (True, False):
    model, cfg = _model(qk_norm=qk_norm)
    tokens, seg, pos = _inputs(batch=1)
    params = _init(model)
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 10.0 if "query" in jax.tree_util.keystr(path) and "norm" not in jax.tree_util.keystr(path)
        else x, params)
    same = np.allclose(_logits(model, params, tokens), _logits(model, scaled, tokens), rtol=1e-4, atol=1e-4)
    assert same == qk_norm


def test_softcap_bounds_attention_logits():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 1, 8)) * 100.0
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 1, 8)) * 100.0
  v = jnp.eye(4)[None, :, None, :]
  v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, 4)))
  index, seg = jnp.arange(4)[None], jnp.ones((1, 4), jnp.int32)
  out = attention.xla_attention(q, k, v, index, index, seg, seg, causal=False, window=0, alibi_slopes=None,
                                softcap=1.5)
  weights = np.asarray(out[0, :, 0, :4])  # rows: queries, columns: attention weight of each key
  # Capped logits lie in (-1.5, 1.5), so within a row no weight exceeds another by more than e^3.
  assert (weights.max(-1) / weights.min(-1)).max() <= np.exp(2 * 1.5) * (1 + 1e-4)
  uncapped = attention.xla_attention(q, k, v, index, index, seg, seg, causal=False, window=0, alibi_slopes=None,
                                     softcap=0.0)
  assert np.asarray(uncapped[0, :, 0, :4]).min() < 1e-6


@pytest.mark.parametrize("activation", ["relu", "gelu", "relu2", "swiglu"])
def test_mlp_activations(activation):
  model, cfg = _model(mlp_activation=activation)
  module = mlp.Mlp(ml_collections.FrozenConfigDict(cfg))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, cfg.d_model))
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), x))["params"]
  act = {"relu": lambda h: np.maximum(h, 0), "relu2": lambda h: np.maximum(h, 0) ** 2,
         "gelu": lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
         "swiglu": lambda h: h / (1 + np.exp(-h))}[activation]
  xs = np.asarray(x, np.float64)
  hidden = act(xs @ np.asarray(params["gate" if activation == "swiglu" else "up"], np.float64))
  if activation == "swiglu":
    hidden = hidden * (xs @ np.asarray(params["up"], np.float64))
  expected = hidden @ np.asarray(params["down"], np.float64)
  np.testing.assert_allclose(np.asarray(module.apply({"params": params}, x)), expected, rtol=1e-4, atol=1e-5)


def test_post_norm_blocks_emit_normalised_activations():
  _, cfg = _model(norm_type="layernorm", norm_position="post")
  block = model_lib.Block(ml_collections.FrozenConfigDict(cfg))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, cfg.d_model)) * 5.0 + 3.0
  seg = jnp.ones((2, 8), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  variables = block.init(jax.random.PRNGKey(1), x, seg, pos)
  y, _ = block.apply(variables, x, seg, pos)
  np.testing.assert_allclose(np.asarray(y).mean(-1), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(y).std(-1), 1.0, atol=1e-2)
  _, pre_cfg = _model(norm_type="layernorm", norm_position="pre")
  pre = model_lib.Block(ml_collections.FrozenConfigDict(pre_cfg))
  y_pre, _ = pre.apply(pre.init(jax.random.PRNGKey(1), x, seg, pos), x, seg, pos)
  assert np.asarray(y_pre).std(-1).min() > 3.0  # pre-norm leaves the residual stream's scale (5) as it is


@pytest.mark.parametrize("scheme", ["normal", "scaled_output", "fan_in"])
def test_init_schemes(scheme):
  model, cfg = _model(init_scheme=scheme, d_model=256, num_heads=4, head_dim=64, ffn_dim=512, num_layers=8,
                      init_std=0.02)
  params = nn.meta.unbox(_init(model))
  layer = params["blocks"]["layer_0"]
  query_std, out_std = float(np.std(layer["attention"]["query"])), float(np.std(layer["mlp"]["down"]))
  expected_query = {"normal": 0.02, "scaled_output": 0.02, "fan_in": 256 ** -0.5}[scheme]
  expected_out = {"normal": 0.02, "scaled_output": 0.02 / 4.0, "fan_in": 512 ** -0.5}[scheme]
  assert abs(query_std / expected_query - 1) < 0.05 and abs(out_std / expected_out - 1) < 0.05


@pytest.mark.parametrize("policy", ["full", "save_matmuls"])
def test_remat_policies_give_the_same_gradients(policy):
  tokens, seg, pos = _inputs()
  grads = {}
  for name in ("none", policy):
    model, _ = _model(remat_policy=name)
    params = _init(model)
    loss = lambda p, m=model: jnp.mean(m.apply({"params": p}, tokens, seg, pos)[0] ** 2)
    grads[name] = jax.grad(loss)(params)
  for a, b in zip(jax.tree_util.tree_leaves(grads["none"]), jax.tree_util.tree_leaves(grads[policy])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_remat_is_in_the_compiled_backward():
  tokens, seg, pos = _inputs()
  texts = {}
  for name in ("none", "full"):
    model, _ = _model(remat_policy=name)
    params = _init(model)
    texts[name] = str(jax.make_jaxpr(jax.grad(lambda p, m=model: jnp.sum(m.apply({"params": p}, tokens, seg,
                                                                                   pos)[0])))(params))
  assert "remat" in texts["full"] and "remat" not in texts["none"]


@pytest.mark.parametrize("variant", ["grouped_query", "local", "alibi", "softcap", "post_layernorm_bias"])
def test_attention_implementations_agree(variant):
  tokens, seg, pos = _inputs(seq=40)
  seg = seg.at[:, 25:].set(2)  # two documents per row
  pos = pos.at[:, 25:].set(jnp.arange(15))
  outputs = {}
  for impl in ("xla", "dot_product_attention", "blockwise"):
    if impl == "dot_product_attention" and variant == "softcap":
      continue
    model, _ = _model(attention_impl=impl, attention_block_size=16, **VARIANTS[variant])
    params = _init(model)  # the same seed: the same parameters for every implementation
    outputs[impl] = _logits(model, params, tokens, seg, pos)
  for impl, logits in outputs.items():
    np.testing.assert_allclose(logits, outputs["xla"], rtol=1e-4, atol=1e-4, err_msg=impl)


def test_auto_implementation_picks_blockwise_for_long_sequences_on_cpu():
  _, cfg = _model(attention_impl="auto", blockwise_min_seq_len=1024)
  assert attention.resolve_impl(cfg, 512) == "xla"
  assert attention.resolve_impl(cfg, 1024) == "blockwise"


KV_CACHE_VARIANTS = dict(VARIANTS, blockwise=dict(attention_impl="blockwise", attention_block_size=8),
                         jax_nn=dict(attention_impl="dot_product_attention", num_kv_heads=2))


@pytest.mark.parametrize("variant", sorted(KV_CACHE_VARIANTS))
def test_kv_cache_decoding_matches_the_full_forward_pass(variant):
  model, cfg = _model(**KV_CACHE_VARIANTS[variant])
  batch, total, prompt = 2, 14, 5
  tokens, _, _ = _inputs(batch=batch, seq=total, seed=3)
  params = _init(model)
  full = _logits(model, params, tokens)
  cache = generate.init_cache(model, batch, max_len=16)
  decode = jax.jit(lambda p, c, t: generate.decode(model, p, c, t))
  logits, cache = decode(params, cache, tokens[:, :prompt])  # prefill
  steps = [np.asarray(logits)]
  for t in range(prompt, total):
    logits, cache = decode(params, cache, tokens[:, t:t + 1])
    steps.append(np.asarray(logits))
  assert int(generate.cached_length(cache)) == total
  cached = np.concatenate(steps, axis=1)
  assert np.max(np.abs(cached - full)) <= 1e-4, np.max(np.abs(cached - full))
  if "local" in variant:  # local layers keep a rolling buffer of their window, not the whole sequence
    slots = {name: layer["attention"]["key"].shape[2] for name, layer in cache["blocks"].items()}
    assert slots["layer_0"] == cfg.sliding_window
    assert slots.get("layer_1", 16) == 16


def test_kv_cache_rolling_buffer_with_a_prompt_longer_than_the_window():
  model, cfg = _model(attention_pattern=("local",), sliding_window=3, num_kv_heads=1)
  tokens, _, _ = _inputs(batch=1, seq=12, seed=4)
  params = _init(model)
  full = _logits(model, params, tokens)
  cache = generate.init_cache(model, 1, max_len=12)
  logits, cache = generate.decode(model, params, cache, tokens[:, :7])  # 7 > window 3
  np.testing.assert_allclose(np.asarray(logits), full[:, :7], atol=1e-4)
  logits, cache = generate.decode(model, params, cache, tokens[:, 7:9])  # a chunk after the prefill
  np.testing.assert_allclose(np.asarray(logits), full[:, 7:9], atol=1e-4)
  for t in range(9, 12):  # up to the cache's last slot
    logits, cache = generate.decode(model, params, cache, tokens[:, t:t + 1])
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-4)
  with pytest.raises(ValueError, match="exceeds model.max_seq_len"):
    generate.init_cache(model, 1, max_len=cfg.max_seq_len + 1)


def _reference_attention(q, k, v, mask, bias, softcap):
  """Plain attention differentiated by JAX: [b, t, h, d] queries over [b, s, kv, d] keys, kv heads repeated."""
  group = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  if softcap > 0:
    logits = softcap * jnp.tanh(logits / softcap)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask[:, None], logits, -1e30)
  return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("num_kv_heads,window,alibi,softcap,query_chunk",
                         [(4, 0, False, 0.0, 0), (2, 0, False, 0.0, 16), (1, 5, False, 0.0, 0), (2, 5, False, 0.0, 16),
                          (4, 0, True, 0.0, 16), (2, 0, False, 2.0, 0)])
def test_xla_attention_backward_matches_autodiff(num_kv_heads, window, alibi, softcap, query_chunk):
  """The hand-written backward of the xla implementation (and its causal query chunks) against plain autodiff."""
  batch, seq, heads, head_dim = 2, 40, 4, 8
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (batch, seq, heads, head_dim))
  k, v = (jax.random.normal(key, (batch, seq, num_kv_heads, head_dim)) for key in keys[1:3])
  cotangent = jax.random.normal(keys[3], q.shape)
  index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  segment = jnp.ones((batch, seq), jnp.int32).at[:, 25:].set(2)  # two documents per row
  slopes = positions_lib.alibi_slopes(heads) if alibi else None
  mask = attention.attention_mask(index, index, segment, segment, causal=True, window=window)
  bias = None if slopes is None else -slopes[None, :, None, None] * jnp.abs(index[:, :, None] - index[:, None, :])[:, None]

  def ours(q, k, v):
    out = attention.xla_attention(q, k, v, index, index, segment, segment, causal=True, window=window,
                                  alibi_slopes=slopes, softcap=softcap, query_chunk=query_chunk)
    return jnp.sum(out * cotangent)

  def reference(q, k, v):
    return jnp.sum(_reference_attention(q, k, v, mask, bias, softcap) * cotangent)

  value, grads = jax.value_and_grad(ours, argnums=(0, 1, 2))(q, k, v)
  expected_value, expected = jax.value_and_grad(reference, argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  for name, got, want in zip("qkv", grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def _loss_and_grads(model, params, tokens, seg, pos):
  def loss(p):
    logits = model.apply({"params": p}, tokens, seg, pos)[0]
    sums = objectives.summed_losses(logits, tokens, jnp.ones_like(tokens))
    return sums["cross_entropy"] / sums["tokens"]
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("variant", ["grouped_query", "local_global"])
def test_attention_query_chunks_leave_the_loss_and_gradients_unchanged(variant):
  tokens, seg, pos = _inputs(seq=40)
  seg = seg.at[:, 25:].set(2)
  pos = pos.at[:, 25:].set(jnp.arange(15))
  results, flops = {}, {}
  for chunk in (0, 16):  # 16 does not divide 40: the last chunk is shorter
    model, _ = _model(attention_impl="xla", attention_query_chunk=chunk, **VARIANTS[variant])
    params = _init(model)
    results[chunk] = _loss_and_grads(model, params, tokens, seg, pos)
    forward = jax.jit(lambda p, m=model: m.apply({"params": p}, tokens, seg, pos)[0])
    flops[chunk] = forward.lower(params).compile().cost_analysis()["flops"]
  (loss, grads), (chunked_loss, chunked_grads) = results[0], results[16]
  np.testing.assert_allclose(chunked_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(chunked_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  assert flops[16] < flops[0]  # the chunks skip the logits above the diagonal


def test_unrolled_layers_leave_the_loss_and_gradients_unchanged():
  tokens, seg, pos = _inputs()
  results, texts = {}, {}
  for unroll in (False, True):
    model, _ = _model(unroll_layers=unroll, num_layers=4)
    params = _init(model)
    results[unroll] = _loss_and_grads(model, params, tokens, seg, pos)
    texts[unroll] = jax.jit(lambda p, m=model: m.apply({"params": p}, tokens, seg, pos)[0]).lower(params).as_text()
  (loss, grads), (unrolled_loss, unrolled_grads) = results[False], results[True]
  np.testing.assert_allclose(unrolled_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(unrolled_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  assert "while" in texts[False] and "while" not in texts[True]  # the same parameters, no loop over depth


@pytest.mark.parametrize("spec, x_shape, kernel_shape, kwargs", [
    ("bsd,df->bsf", (3, 5, 8), (8, 12), {}),
    ("bsd,dhk->bshk", (3, 5, 8), (8, 2, 4), {}),
    ("bshk,hkd->bsd", (3, 5, 2, 4), (2, 4, 8), {"in_dims": 2}),
    ("bsd,vd->bsv", (3, 5, 8), (20, 8), {"kernel_transposed": True}),
])
def test_token_matmul_equals_the_einsum_with_its_gradients(spec, x_shape, kernel_shape, kwargs):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
  kernel = jnp.asarray(rng.standard_normal(kernel_shape, np.float32))
  ours = lambda x, w: jnp.sum(jnp.sin(layers.matmul(x, w, **kwargs)))
  reference = lambda x, w: jnp.sum(jnp.sin(jnp.einsum(spec, x, w)))
  np.testing.assert_allclose(layers.matmul(x, kernel, **kwargs), jnp.einsum(spec, x, kernel), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.grad(ours, argnums=(0, 1))(x, kernel), jax.grad(reference, argnums=(0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The point of the 2-D form: every dot of the forward and backward pass contracts a single axis.
  hlo = jax.jit(jax.grad(ours, argnums=(0, 1))).lower(x, kernel).as_text()
  contractions = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
  assert contractions and all("contracting_dims = [1] x" in line or "contracting_dims = [0] x" in line
                              for line in contractions), contractions


def test_token_matmul_names_a_shape_mismatch():
  with pytest.raises(ValueError, match="does not end in the kernel's input axes"):
    layers.matmul(jnp.zeros((2, 3, 8)), jnp.zeros((4, 5)))


def test_token_matmul_adds_its_bias_on_the_2d_product_with_its_gradient():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 8), np.float32))
  kernel = jnp.asarray(rng.standard_normal((8, 3, 4), np.float32))
  bias = jnp.asarray(rng.standard_normal((3, 4), np.float32))
  ours = lambda x, w, b: jnp.sum(jnp.sin(layers.matmul(x, w, bias=b)))
  reference = lambda x, w, b: jnp.sum(jnp.sin(jnp.einsum("bsi,ihd->bshd", x, w) + b))
  np.testing.assert_allclose(ours(x, kernel, bias), reference(x, kernel, bias), rtol=1e-5)
  grads = zip(jax.grad(ours, argnums=(0, 1, 2))(x, kernel, bias), jax.grad(reference, argnums=(0, 1, 2))(x, kernel, bias))
  for a, b in grads:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.matmul(x, kernel, bias=0.0), jnp.einsum("bsi,ihd->bshd", x, kernel), rtol=1e-5)
  with pytest.raises(ValueError, match=r"bias \(4,\) is not the kernel's output shape \(3, 4\)"):
    layers.matmul(x, kernel, bias=jnp.zeros((4,)))
