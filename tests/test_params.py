"""Parameter, FLOP and memory accounting (lm/params.py) and the model zoo (configs/)."""

import functools
import importlib
import math
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs import families
from lm import attention
from lm import config as config_lib
from lm import metrics
from lm import model as model_lib
from lm import params
from lm import sharding
from lm import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = ("gpt2_124m", "gpt2_355m", "gpt2_774m", "gpt2_1_5b", "llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b",
       "llama3_70b", "llama3_405b", "mistral_7b", "mixtral_8x7b")
TINY = ("gpt2_tiny", "llama_tiny", "mistral_tiny", "mixtral_tiny")
MATMUL_KERNELS = ("query", "key", "value", "out", "gate", "up", "down", "router", "unembed")


def _config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _leaves(tree):
  """[(names along the path, leaf)] of a parameter tree."""
  return [([e.key for e in path if isinstance(e, jax.tree_util.DictKey)], leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


@functools.lru_cache(maxsize=None)
def _real_params(name):
  """Parameters of a real init of zoo config `name` (unboxed arrays)."""
  model = model_lib.from_config(_config(name).model)
  tokens = jnp.zeros((2, 16), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (2, 16))
  return nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, jnp.ones_like(tokens), positions)["params"])


@pytest.mark.parametrize("name", ZOO)
def test_zoo_configs_validate_on_their_device_count(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  config_lib.validate(config, module.NUM_DEVICES, 1)
  assert config.model.compute_dtype == "bfloat16" and config.model.param_dtype == "float32"
  assert config.data.seq_len == config.model.max_seq_len  # rows are the full context
  assert config.mesh.fsdp > 1


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_validate_on_eight_devices(name):
  config = _config(name)
  config_lib.validate(config, 8, 1)
  m = config.model
  assert (m.vocab_size, m.d_model, m.num_layers, config.data.seq_len) == (512, 64, 2, 64)
  assert (m.compute_dtype, config.train.steps, config.train.global_batch_size) == ("float32", 20, 8)


def test_family_choices():
  gpt2, llama2, llama3 = _config("gpt2_124m").model, _config("llama2_70b").model, _config("llama3_405b").model
  mistral, mixtral = _config("mistral_7b").model, _config("mixtral_8x7b").model
  assert (gpt2.position_embedding, gpt2.norm_type, gpt2.mlp_activation, gpt2.use_bias, gpt2.tie_embeddings,
          gpt2.head_dim, gpt2.ffn_dim, gpt2.norm_eps) == ("learned", "layernorm", "gelu", True, True, 64, 3072, 1e-5)
  assert (llama2.num_kv_heads, llama2.ffn_dim, llama2.tie_embeddings, llama2.use_bias) == (8, 28672, False, False)
  assert (llama3.d_model, llama3.num_layers, llama3.num_heads, llama3.num_kv_heads, llama3.rope_theta) == (
      16384, 126, 128, 8, 5e5)
  assert tuple(mistral.attention_pattern) == ("local",) and mistral.sliding_window == 4096
  assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.sliding_window, mixtral.rope_theta) == (8, 2, 0, 1e6)
  # The CPU versions are built by the same family functions.
  assert _config("gpt2_tiny").model.position_embedding == "learned"
  assert _config("mistral_tiny").model.attention_pattern == ("local",)
  assert _config("mixtral_tiny").model.num_experts == 4


@pytest.mark.parametrize("name, key, published, exact", [
    ("gpt2_124m", "total", 124_439_808, True),
    ("gpt2_1_5b", "total", 1.56e9, False),
    ("llama2_7b", "total", 6_738_415_616, True),
    ("llama2_70b", "total", 68.98e9, False),
    ("llama3_8b", "total", 8_030_261_248, True),
    ("mistral_7b", "total", 7_241_732_096, True),
    ("mixtral_8x7b", "total", 46_702_792_704, True),
    ("mixtral_8x7b", "active", 12.9e9, False),
])
def test_published_parameter_counts(name, key, published, exact):
  count = params.count_parameters(_config(name).model)[key]
  assert abs(count / published - 1) < 0.005
  if exact:
    assert count == published


@pytest.mark.parametrize("name", TINY)
def test_counts_match_a_real_init(name):
  m = _config(name).model
  counts = params.count_parameters(m)
  leaves = _leaves(_real_params(name))
  assert counts["total"] == sum(leaf.size for _, leaf in leaves)
  assert counts["token_embedding"] == m.vocab_size * m.d_model
  assert counts["position_embedding"] == (m.max_seq_len * m.d_model if m.position_embedding == "learned" else 0)
  assert counts["output"] == (0 if m.tie_embeddings else m.d_model * m.vocab_size)
  experts = sum(leaf.size for names, leaf in leaves if "moe" in names and names[-1] != "router")
  assert counts["experts"] == experts
  assert counts["active"] == counts["total"] - experts + experts * m.experts_per_token // max(m.num_experts, 1)
  if m.num_experts:
    assert counts["active"] < counts["total"]


@pytest.mark.parametrize("name", ("gpt2_124m", "gpt2_355m", "gpt2_774m", "gpt2_1_5b"))
def test_12ld2_approximation_holds_for_gpt2_shapes(name):
  counts = params.count_parameters(_config(name).model)
  # 12·L·d² leaves out only biases and norm scales (13·L·d), well under 1% at these widths.
  assert abs(counts["approx_12ld2"] / counts["non_embedding"] - 1) < 0.01


@pytest.mark.parametrize("name", ("gpt2_tiny", "llama_tiny"))
def test_6n_is_six_times_the_matmul_weights(name):
  m = _config(name).model
  leaves = _leaves(_real_params(name))
  matmul = sum(leaf.size for names, leaf in leaves if names[-1] in MATMUL_KERNELS)
  if m.tie_embeddings:  # the token table is also the output projection
    matmul += m.vocab_size * m.d_model
  flops = params.flops_per_token(m, 64)
  assert flops["matmul_weights"] == matmul
  assert flops["six_n"] == 6 * matmul
  assert flops["total"] == flops["six_n"] + flops["attention"]
  assert metrics.flops_per_token(m, 64) == flops["total"]  # MFU counts the same thing


def test_attention_term_matches_the_formula():
  m = _config("llama_tiny").model
  seq = 64
  attention_flops = params.flops_per_token(m, seq)["attention"]
  # 12·L·seq·heads·head_dim with the causal half: exactly (seq + 1) / 2 visible keys per query.
  assert attention_flops == 12 * m.num_layers * m.num_heads * m.head_dim * (seq + 1) / 2
  assert attention_flops == pytest.approx(6 * m.num_layers * seq * m.num_heads * m.head_dim, rel=1 / seq)


@pytest.mark.parametrize("seq, window, causal", [(64, 0, True), (64, 16, True), (64, 16, False), (64, 0, False),
                                                  (10, 16, True), (37, 5, False)])
def test_visible_keys_counts_the_attention_mask(seq, window, causal):
  index = jnp.arange(seq, dtype=jnp.int32)[None]
  segment = jnp.ones_like(index)
  mask = attention.attention_mask(index, index, segment, segment, causal=causal, window=window)
  assert params.visible_keys(seq, window, causal) == pytest.approx(float(mask.sum()) / seq)


def test_local_layers_count_window_keys():
  m = _config("mistral_tiny").model
  seq, window = 64, m.sliding_window
  flops = params.flops_per_token(m, seq)
  keys = params.visible_keys(seq, window, True)
  # w keys per query, fewer for the first w - 1 queries of the row: w - w(w - 1) / 2seq on average.
  assert keys == pytest.approx(window - window * (window - 1) / (2 * seq))
  assert window / 2 < keys < window
  assert flops["attention"] == 12 * m.num_layers * m.num_heads * m.head_dim * keys


def test_moe_flops_count_active_experts():
  name = "mixtral_tiny"
  m = _config(name).model
  flops = params.flops_per_token(m, 64)
  leaves = _leaves(_real_params(name))
  expert = sum(leaf.size for names, leaf in leaves if "moe" in names and names[-1] in MATMUL_KERNELS[:-2])
  other = sum(leaf.size for names, leaf in leaves if names[-1] in MATMUL_KERNELS) - expert
  assert flops["matmul_weights"] == other + expert * m.experts_per_token // m.num_experts
  assert flops["matmul_weights"] < other + expert
  assert flops["moe_dispatch"] > 0 and flops["total"] == flops["six_n"] + flops["attention"]


def _shard_bytes(tree):
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name, mesh", [("llama_tiny", dict(fsdp=2, tensor=2)),
                                        ("mixtral_tiny", dict(fsdp=2, expert=2, tensor=2))])
def test_state_bytes_match_a_real_sharded_state(name, mesh):
  config = _config(name)
  for axis, size in mesh.items():
    config.mesh[axis] = size
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state(jax.random.PRNGKey(0))
  estimate = params.memory_per_device(config, dict(trainer.mesh.shape))
  assert estimate["parameters"] == _shard_bytes(state.params)
  assert estimate["gradients"] == estimate["parameters"]
  assert estimate["optimizer"] == _shard_bytes(state.opt_state)
  assert estimate["parameters"] < 4 * params.count_parameters(config.model)["total"]  # really split


def _measurement_config(remat):
  """A Llama-shaped model big enough that activations dominate: d_model 256, 4 layers, seq 256, vocab 4096."""
  config = base.get_config()
  families.llama(config, d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, ffn_dim=768, vocab_size=4096,
                 max_seq_len=256, rope_theta=1e4)
  families.cpu_sized(config, name="measure")
  config.data.seq_len = 256
  config.model.remat_policy = remat
  return config


def _compiled_peak(config, mesh):
  """Per-device peak bytes XLA plans for the real train step: arguments + outputs + temporaries - aliased."""
  trainer = train.build(config, mesh)
  shape = (config.train.global_batch_size, config.data.seq_len)
  batch = {key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=trainer.batch_sharding) for key in params.BATCH_KEYS}
  with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
    compiled = trainer.train_step.__wrapped__.lower(trainer.abstract_state, batch).compile()
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


@pytest.mark.parametrize("remat, mesh", [("none", dict(data=1)), ("full", dict(data=1)), ("save_matmuls", dict(data=1)),
                                         ("none", dict(data=2, fsdp=2, tensor=2))])
def test_memory_estimate_is_close_to_the_compiled_peak(remat, mesh):
  config = _measurement_config(remat)
  for axis, size in mesh.items():
    config.mesh[axis] = size
  num_devices = math.prod(size for size in mesh.values())
  device_mesh = sharding.make_mesh(config.mesh, jax.devices()[:num_devices])
  estimate = params.memory_per_device(config, dict(device_mesh.shape), backend="cpu")
  measured = _compiled_peak(config, device_mesh)
  assert estimate["activations"] > estimate["parameters"] + estimate["gradients"] + estimate["optimizer"]
  assert abs(estimate["total"] / measured - 1) < 0.15, (estimate["total"], measured)


def test_remat_policies_order_the_activation_estimate():
  sizes = dict(data=1, fsdp=1, expert=1, tensor=1)
  totals = {remat: params.memory_per_device(_measurement_config(remat), sizes, "cpu")["activations"]
            for remat in ("none", "save_matmuls", "full")}
  assert totals["none"] > totals["save_matmuls"] > totals["full"]


def test_shard_elements_rounds_uneven_splits_up():
  rules = sharding.rules(base.get_config().mesh)
  sizes = dict(data=2, fsdp=4, expert=1, tensor=3)
  assert sharding.shard_elements((10, 7), ("embed", "vocab"), rules, sizes) == 3 * 3
  assert sharding.shard_elements((8, 5), ("batch", "activation_seq"), rules, sizes) == 1 * 5


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "lm.params", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def test_cli_prints_the_table():
  result = _cli("--config", "configs/llama2_7b.py", "--mesh", "fsdp=8", "--config.train.global_batch_size=8",
                "--shardings",
                "--device_memory_gb", "80", "--platform", "gpu")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  for text in ("6,738,415,616", "262,144,000", "12·L·d²", "6N", "attention QK^T and AV", "total (used for MFU)",
               "mesh data=1 fsdp=8 expert=1 tensor=1", "1 x 4096 tokens per device", "optimizer state",
               "activations", "fits in 80 GB"):
    assert text in out, text
  assert f"{params.flops_per_token(_config('llama2_7b').model, 4096)['total']:,.0f}" in out
  # --shardings: every parameter's layout, and fsdp=8 stores an eighth of everything.
  assert re.search(r"blocks/layer_0/mlp/down +\(32, 11008, 4096\) +float32 +P\(None, 'tensor', 'fsdp'\) +"
                   f"{32 * 11008 * 4096 * 4 // 8:,}", out)
  assert "parameters + optimizer state   total   80.86 GB  per device   10.11 GB  (1.000 x an even split over 8" in out


def test_cli_prints_active_parameters_for_moe():
  result = _cli("--config", "configs/mixtral_8x7b.py", "--num_devices", "128")
  assert result.returncode == 0, result.stderr
  assert "46,702,792,704" in result.stdout and "12,879,925,248" in result.stdout
  assert "mesh data=2 fsdp=8 expert=8 tensor=1" in result.stdout


@pytest.mark.parametrize("mesh, message", [("fsdp=eight", "--mesh fsdp='eight': the size must be an integer"),
                                           ("fsdp=3", "is not divisible by the data-parallel size")])
def test_cli_rejects_a_bad_mesh(mesh, message):
  result = _cli("--config", "configs/llama2_7b.py", "--mesh", mesh)
  assert result.returncode == 2
  assert message in result.stderr and not result.stdout.strip()


@pytest.mark.parametrize("text, message", [("pipeline=2", "'pipeline' is not one of data, fsdp, expert, tensor"),
                                           ("fsdp", "is not AXIS=SIZE"), ("tensor=0", "must be positive"),
                                           ("expert=-1", "must be positive"), ("data=1.5", "must be an integer")])
def test_parse_mesh_errors(text, message):
  with pytest.raises(ValueError, match=message):
    params.parse_mesh(text)


def test_parse_mesh():
  assert params.parse_mesh("data=2, fsdp=4,tensor=1") == dict(data=2, fsdp=4, tensor=1)
  assert params.parse_mesh("data=-1") == dict(data=-1)
  config = _config("llama2_7b")
  assert params.resolve_mesh(config.mesh, {"tensor": 2}, num_devices=64) == dict(data=4, fsdp=8, expert=1, tensor=2)
  assert params.resolve_mesh(config.mesh, {})["data"] == 1
  assert np.prod(list(params.resolve_mesh(config.mesh, {}, 128).values())) == 128
