"""The training-step benchmark: its PyTorch peer computes our model, its rows, skips, profile and CLI."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_train
from experiments import torch_reference
from lm import model as model_lib
from lm import objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_BENCH = '''
from configs import bench_5m


def get_config():
  config = bench_5m.get_config()
  config.model.vocab_size = 256
  config.model.d_model = 32
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.num_kv_heads = 2
  config.model.head_dim = 16
  config.model.ffn_dim = 128
  config.model.max_seq_len = 32
  config.model.attention_query_chunk = 8
  config.data.seq_len = 32
  config.train.global_batch_size = 8
  return config
'''


@pytest.fixture(scope="module")
def tiny_config_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "tiny_bench.py"
  path.write_text(TINY_BENCH)
  return str(path)


def test_the_pytorch_reference_computes_our_model(tiny_config_path):
  """With our initial parameters copied in, the PyTorch model's loss and gradient norm equal ours."""
  torch = pytest.importorskip("torch")
  config = bench_train.load_config(tiny_config_path)
  model = model_lib.from_config(config.model)
  batch = {k: jnp.asarray(v) for k, v in bench_train.synthetic_batch(config).items()}
  params = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(
      model.init(jax.random.PRNGKey(3), batch["inputs"], batch["segment_ids"], batch["positions"])["params"]))

  def loss(p):
    logits, _ = model.apply({"params": p}, batch["inputs"], batch["segment_ids"], batch["positions"])
    sums = objectives.summed_losses(logits, batch["targets"], batch["loss_mask"])
    return sums["cross_entropy"] / sums["tokens"]

  our_loss, grads = jax.value_and_grad(loss)(params)
  our_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree_util.tree_leaves(grads))))

  reference, _ = torch_reference.build(config.model, config.optim)
  torch_reference.load_params(reference, params)
  tokens = torch.from_numpy(bench_train.synthetic_tokens(config).astype(np.int64))
  their_loss = reference(tokens[:, :-1], tokens[:, 1:])
  their_loss.backward()
  their_norm = float(torch.sqrt(sum(torch.sum(p.grad ** 2) for p in reference.parameters())))
  np.testing.assert_allclose(their_loss.item(), float(our_loss), rtol=1e-5)
  np.testing.assert_allclose(their_norm, our_norm, rtol=1e-4)


def test_without_torch_our_rows_are_measured_and_the_peers_skipped(tiny_config_path, monkeypatch):
  monkeypatch.setattr(torch_reference, "available", lambda: False)
  lines = []
  rows, peak, _ = bench_train.run([tiny_config_path], steps=1, warmup=1, peers=["eager", "compile"], log=lines.append)
  assert peak > 0 and any("peak:" in line for line in lines)
  assert rows[0].implementation == "ours" and rows[0].step_seconds > 0 and rows[0].tokens_per_step == 8 * 32
  skipped = [r for r in rows if r.step_seconds is None]
  assert [r.implementation for r in skipped] == ["PyTorch eager", "PyTorch compile"]
  assert all("torch is not installed" in r.note for r in skipped)
  assert "skipped: torch is not installed" in bench_train.format_table(rows, peak)


def test_a_config_the_reference_cannot_build_skips_the_peer(tiny_config_path):
  pytest.importorskip("torch")
  config = bench_train.load_config(tiny_config_path, ["model.num_kv_heads=1", "model.mlp_activation='swiglu'"])
  step, why = bench_train.peer_step(config, "eager")
  assert step is None and "num_kv_heads" in why and "mlp_activation='swiglu'" in why


def test_unknown_peers_and_config_keys_are_errors(tiny_config_path):
  with pytest.raises(bench_train.config_lib.ConfigError, match="unknown peer 'jit'"):
    bench_train.run([tiny_config_path], steps=1, warmup=1, peers=["jit"])
  with pytest.raises(bench_train.config_lib.ConfigError, match="unknown config key 'model.widht'"):
    bench_train.load_config(tiny_config_path, ["model.widht=3"])


def test_profile_breaks_the_step_down_by_what_it_computes(tiny_config_path, tmp_path):
  step = bench_train.OurStep(bench_train.load_config(tiny_config_path))
  breakdown, wall = bench_train.profile(step, str(tmp_path / "trace"))
  categories = {name for name, _, _ in breakdown}
  assert wall > 0 and abs(sum(share for _, _, share in breakdown) - 1) < 1e-6
  for expected in ("matmul: MLP (forward)", "matmul: MLP (backward)", "optimizer update, guard and metrics",
                   "attention: logits, mask, softmax, weighted sum (backward)"):
    assert expected in categories, categories


def test_op_categories():
  category = bench_train.op_category
  assert category("jit(train_step)/jvp(Transformer)/blocks/layer_0/mlp/ti,io->to/dot_general") == \
      "matmul: MLP (forward)"
  assert category("jit(train_step)/transpose(jvp(Transformer))/blocks/layer_0/attention/ti,io->to/dot_general") \
      == "matmul: attention projections (backward)"
  assert category("jit(train_step)/transpose(jvp(Transformer))/ti,oi->to/dot_general") == \
      "matmul: output logits (backward)"
  # A weight gradient's dot carries the name of the einsum's transpose rule.
  assert category("jit(train_step)/transpose(jvp(Transformer))/closed_call/blocks/layer_0/mlp/ti,io->to/transpose") \
      == "matmul: MLP (backward)"
  assert category("jit(train_step)/transpose(jvp(Transformer))/closed_call/blocks/layer_0/mlp/tanh") == \
      "MLP activation (backward)"
  assert category("jit(train_step)/jvp()/exp") == "softmax cross-entropy (forward)"
  assert category("jit(train_step)/add") == "optimizer update, guard and metrics"


def test_command_line_prints_ours_an_ablation_and_the_peer_side_by_side(tiny_config_path):
  pytest.importorskip("torch")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one device
  result = subprocess.run(
      [sys.executable, "-m", "experiments.bench_train", "--configs", tiny_config_path, "--steps", "1", "--warmup", "1",
       "--peers", "eager", "--ablate", "model.attention_query_chunk=0", "--compile_depths", "2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {}
  for line in result.stdout.splitlines():
    if line.startswith("tiny_bench "):
      implementation = line[12:56].strip()
      rows[implementation] = line[56:].split()
  assert set(rows) == {"ours", "ours, model.attention_query_chunk=0", "PyTorch eager"}, result.stdout
  tokens_per_second, step_ms, gflop, share, ratio, compile_s, first_loss = rows["PyTorch eager"]
  assert float(tokens_per_second.replace(",", "")) > 0 and ratio.endswith("x") and rows["ours"][4] == "1.00x"
  assert gflop == rows["ours"][2]  # the same model FLOPs per step
  # Both start from random initialisations of the same shape: the first batch's loss is near ln(vocab) for both.
  assert abs(float(first_loss) - float(rows["ours"][6])) < 0.1
  assert "Compile time of" in result.stdout and "scanned s" in result.stdout
