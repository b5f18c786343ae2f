import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from tests import conftest
from lm import model
from lm import params
from lm import sharding
from lm import train


def _loss_and_shardings(config, mesh_shape, host_batch):
  config.mesh.data, config.mesh.fsdp, config.mesh.expert, config.mesh.tensor = mesh_shape
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.build(config, mesh)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batch = sharding.global_batch(host_batch, trainer.batch_sharding)
  total, count = trainer.eval_step(state.params, batch)
  return float(total) / float(count), trainer, state


def test_loss_is_the_same_under_every_mesh_shape(train_iterator):
  config = tiny.get_config()
  host_batch = next(train_iterator(config))
  losses = {}
  for shape in [(8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 1, 2)]:
    losses[shape], trainer, state = _loss_and_shardings(config, shape, host_batch)
  reference = losses[(8, 1, 1, 1)]
  assert 5.0 < reference < 7.5  # near log(512) = 6.24 at init
  for shape, loss in losses.items():
    assert abs(loss - reference) / reference <= 1e-5, (shape, loss, reference)


def test_parameters_and_optimizer_state_are_sharded_by_the_rules(train_iterator):
  config = tiny.get_config()
  _, trainer, state = _loss_and_shardings(config, (2, 2, 1, 2), next(train_iterator(config)))
  query = state.params["blocks"]["layer_0"]["attention"]["query"]  # [layers, embed, heads, head_dim]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert query.addressable_shards[0].data.shape == (2, 32, 2, 16)
  mu = state.opt_state[1].mu["blocks"]["layer_0"]["attention"]["query"]  # AdamW first moment shares the layout
  assert mu.sharding.spec == query.sharding.spec
  lines, _, _ = sharding.describe(model.abstract_params(config.model), trainer.rules, dict(trainer.mesh.shape))
  assert any("attention/query" in line and "P(None, 'fsdp', 'tensor', None)" in line and f"{2 * 32 * 2 * 16 * 4:,}"
             in line for line in lines)


def test_fsdp_8_splits_parameters_and_optimizer_state_eightfold(train_iterator):
  config = tiny.get_config()
  _, trainer, state = _loss_and_shardings(config, (1, 8, 1, 1), next(train_iterator(config)))
  abstract = params.abstract_state(config)
  sizes = dict(trainer.mesh.shape)
  _, param_total, param_local = sharding.describe(abstract["params"], trainer.rules, sizes)
  _, opt_total, opt_local = sharding.describe(abstract["opt_state"], trainer.rules, sizes)
  assert param_local + opt_local <= (param_total + opt_total) / 8 * 1.05
  # The helper's figure is what device 0 really holds.
  device = jax.devices()[0]
  held = sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state))
             for shard in leaf.addressable_shards if shard.device == device)
  assert held == param_local + opt_local
  report = params.sharding_report(config, sizes)
  assert "parameters + optimizer state" in report and "1.000 x an even split over 8 devices" in report


def test_moe_loss_is_the_same_with_experts_sharded_over_the_expert_axis(train_iterator):
  config = tiny.get_config()
  config.model.num_experts, config.model.experts_per_token, config.model.moe_every = 4, 2, 2
  host_batch = next(train_iterator(config))
  losses = {}
  for shape in [(8, 1, 1, 1), (2, 1, 4, 1), (1, 2, 2, 2)]:
    losses[shape], trainer, state = _loss_and_shardings(config, shape, host_batch)
  reference = losses[(8, 1, 1, 1)]
  for shape, loss in losses.items():
    assert abs(loss - reference) / reference <= 1e-5, (shape, loss, reference)
  up = state.params["blocks"]["layer_1"]["moe"]["up"]  # [layers, experts, embed, mlp] on the last mesh, (1, 2, 2, 2)
  assert up.sharding.spec == jax.sharding.PartitionSpec(None, "expert", "fsdp", "tensor")
  assert up.addressable_shards[0].data.shape == (1, 2, 32, 64)


def test_mesh_shape_resolves_data_axis():
  config = tiny.get_config()
  config.mesh.fsdp = 2
  assert sharding.mesh_shape(config.mesh, 8) == (4, 2, 1, 1)
  config.mesh.data = 3
  with pytest.raises(ValueError, match="3\\*2\\*1\\*1 = 6 but there are 8 devices"):
    sharding.mesh_shape(config.mesh, 8)


def test_one_train_step_is_the_same_under_every_mesh(train_iterator):
  """data x fsdp x tensor = 8x1x1, 1x8x1, 2x2x2, 1x2x4: same loss and same updated parameters."""
  config = tiny.get_config()
  config.model.num_kv_heads = 4  # the tensor axis of 4 splits the key/value heads too
  host_batch = next(train_iterator(config))
  results = {}
  for data, fsdp, tensor in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]:
    config.mesh.data, config.mesh.fsdp, config.mesh.expert, config.mesh.tensor = data, fsdp, 1, tensor
    trainer = train.build(config, sharding.make_mesh(config.mesh))
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.train_step(state, sharding.global_batch(host_batch, trainer.batch_sharding))
    results[(data, fsdp, tensor)] = float(metrics["train/loss"]), jax.device_get(state.params)
  reference_loss, reference_params = results[(8, 1, 1)]
  for shape, (loss, updated) in results.items():
    assert abs(loss - reference_loss) / reference_loss <= 1e-5, (shape, loss, reference_loss)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(updated), jax.tree_util.tree_leaves(reference_params),
                            strict=True):
      relative = np.linalg.norm(a - b) / np.linalg.norm(b)
      assert relative <= 1e-5, (shape, jax.tree_util.keystr(path), relative)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_records(run_dir):
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}, [r["eval/loss"] for r in records
                                                                                if "eval/loss" in r]


def test_two_processes_of_four_devices_train_like_one_process_of_eight(launch, tmp_path):
  """jax.distributed over a localhost coordinator with gloo CPU collectives: same losses, checkpoint from both."""
  steps = ["--config.train.steps=5", "--config.log.every_steps=1", "--config.eval.every_steps=5",
           "--config.checkpoint.every_steps=5", "--config.mesh.fsdp=2", "--config.eval.sample_tokens=4"]
  single = launch(tmp_path / "single", *steps)
  assert single.returncode == 0, single.stderr[-3000:]
  single_losses, single_eval = _train_records(tmp_path / "single")
  assert sorted(single_losses) == [1, 2, 3, 4, 5]

  def run_two_processes(run_dir):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lm.launch", "--config", "configs/tiny.py", f"--config.train.run_dir={run_dir}",
         *steps, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=conftest.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
      assert p.returncode == 0, err[-3000:]
    return outputs

  run_dir = tmp_path / "two"
  shutil.copytree(tmp_path / "single" / "tokenizer", run_dir / "tokenizer")  # same tokenizer, trained once
  (out0, _), (out1, _) = run_two_processes(run_dir)
  assert "distributed: process 0 of 2 (coordinator 127.0.0.1:" in out0
  assert "mesh {'data': 4, 'fsdp': 2, 'expert': 1, 'tensor': 1} over 8 cpu devices, 2 process(es)" in out0
  assert "final: step=5" in out0
  # Only process 0 logs (gloo's own connection lines, which may interleave, aside).
  assert [line for line in out1.splitlines() if line.strip() and "peer ranks" not in line] == []
  losses, evals = _train_records(run_dir)
  assert sorted(losses) == [1, 2, 3, 4, 5]
  for step, loss in single_losses.items():
    assert losses[step] == pytest.approx(loss, rel=1e-5), step
  assert evals[-1] == pytest.approx(single_eval[-1], rel=1e-5)
  # The loader position is one JSON for all processes (each one's rows follow from the step) ...
  data_state = json.loads((run_dir / "checkpoints" / "5" / "data" / "metadata").read_text())
  assert data_state["step"] == 5 and data_state["stream"]["global_batch_size"] == 8
  # ... and both processes read the checkpoint back: a relaunch resumes at step 5 and evaluates the same restored parameters.
  (out0, _), _ = run_two_processes(run_dir)
  assert "resumed from step 5" in out0
  assert re.search(r"^final: step=5 val_loss=", out0, re.M)
  assert _train_records(run_dir)[1][-1] == pytest.approx(single_eval[-1], rel=1e-5)


def test_distributed_start_needs_all_explicit_flags_and_stays_single_without_a_cluster():
  assert sharding.initialize_distributed("auto", env={}) == ""
  assert sharding.initialize_distributed("auto", env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == ""
  assert sharding.initialize_distributed("off", env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}) == ""
  with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
    sharding.initialize_distributed("auto", coordinator_address="127.0.0.1:1234", env={})
  with pytest.raises(ValueError, match="--distributed=off contradicts"):
    sharding.initialize_distributed("off", "127.0.0.1:1234", 2, 0, env={})
