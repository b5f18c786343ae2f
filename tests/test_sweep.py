"""Scaling sweeps (experiments/scaling.py): planning, the local runner, cluster commands and the fits of a sweep."""

import json
import math
import os

import numpy as np
import pytest

from configs import tiny
from experiments import scaling as sweep
from lm import config as config_lib
from lm import params as params_lib
from lm import run_dir as run_dir_lib
from lm import train
from tests.conftest import REPO

BASE = "configs/tiny.py"


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # plans name the base config and the run configs by relative paths


def _plan(out_dir, *extra):
  return sweep.main(["plan", "--base", BASE, "--out", str(out_dir), *extra])


def test_isoflop_plan_gives_each_run_d_equal_c_over_6n_and_its_own_schedule(in_repo, tmp_path):
  out = tmp_path / "sweep"
  assert _plan(out, "--budgets", "2e10,4e10", "--sizes", "64x1,96x2,128x2", "--warmup_fraction", "0.1",
               "--min_steps", "5", "--set", "train.global_batch_size=16") == 0
  plan = sweep.read_plan(str(out))
  assert len(plan["runs"]) == 6 and plan["base"] == BASE
  tokens_per_step = 16 * tiny.get_config().data.seq_len
  for run in plan["runs"]:
    config = sweep.load_config_file(sweep.config_path(str(out), run["name"]))  # the run's own config file
    config_lib.validate(config, 8, 1)
    counts = params_lib.count_parameters(config.model)
    steps = config.train.steps
    assert run["params_total"] == counts["total"] and run["params_non_embedding"] == counts["non_embedding"]
    assert (config.model.d_model, config.model.num_layers) == (run["shape"]["d_model"], run["shape"]["num_layers"])
    assert config.model.d_model == config.model.num_heads * config.model.head_dim
    assert run["tokens"] == steps * tokens_per_step
    # D = C / 6N up to the rounding of the step count; C = 6ND of the rounded run within half a step of the budget.
    assert abs(run["budget"] / (6 * counts["total"]) - run["tokens"]) <= tokens_per_step / 2
    assert run["compute_6nd"] == pytest.approx(run["budget"], rel=0.5 / steps)
    assert run["compute"] > run["compute_6nd"]  # the full count adds attention
    assert config.optim.warmup_steps == round(0.1 * steps)  # the cosine ends at train.steps: the run's own length
    assert config.train.run_dir == os.path.join(str(out), "runs", run["name"])
    assert config.train.global_batch_size == 16
  # Smaller models get more tokens at the same budget.
  first = [r for r in plan["runs"] if r["budget"] == 2e10]
  assert [r["tokens"] for r in first] == sorted((r["tokens"] for r in first), reverse=True)


def test_sizes_given_as_counts_take_the_nearest_model_of_the_shape_ladder(in_repo):
  base = tiny.get_config()
  ladder = sweep.shape_ladder(base, aspect=32, max_params=1e6)
  assert [s.params_total for s in ladder] == sorted(s.params_total for s in ladder)
  assert all(s.num_layers == max(1, round(s.d_model / 32)) for s in ladder)
  target = ladder[3]
  (shape,) = sweep.resolve_sizes(base, [f"{target.params_total * 1.05:.0f}"], aspect=32)
  assert shape == target
  with pytest.raises(sweep.PlanError, match="--sizes 1: the nearest model"):
    sweep.resolve_sizes(base, ["1"], aspect=32)
  with pytest.raises(sweep.PlanError, match="give the same model"):
    sweep.resolve_sizes(base, [target.text, f"{target.params_total}"], aspect=32)
  assert sweep.parse_count("1.5M") == 1.5e6 and sweep.parse_count("120k") == 1.2e5 and sweep.parse_count("2e9") == 2e9


def test_n_by_d_grid_and_plan_errors(in_repo, tmp_path, capsys):
  out = tmp_path / "grid"
  assert _plan(out, "--tokens", "20k,40k", "--sizes", "64x1,64x2", "--min_steps", "2") == 0
  runs = sweep.read_plan(str(out))["runs"]
  sizes = {sweep.short(r["params_total"]) for r in runs}
  assert len(sizes) == 2
  assert {r["name"] for r in runs} == {f"D{d}_N{n}" for d in ("20k", "40k") for n in sizes}
  # Whole steps of 8 x 64 tokens, the nearest to the asked-for counts.
  assert sorted({r["tokens"] for r in runs}) == [round(20e3 / 512) * 512, round(40e3 / 512) * 512]
  assert all(r["budget"] is None for r in runs)
  capsys.readouterr()
  cases = [
      (["--budgets", "1e10", "--tokens", "1M", "--sizes", "64x1"], "either --budgets"),
      (["--sizes", "64x1"], "either --budgets"),
      (["--budgets", "1e9", "--sizes", "64x1"], "fewer than --min_steps"),
      (["--budgets", "1e10", "--sizes", "65x1"], "not a multiple of model.head_dim"),
      (["--budgets", "1e10", "--sizes", "64x1", "--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
      (["--budgets", "1e10", "--sizes", "lots"], "'lots' is not a number"),
  ]
  for args, message in cases:
    assert _plan(tmp_path / "bad", *args) == 2, args
    assert message in capsys.readouterr().err, args
  assert _plan(out, "--tokens", "20k", "--sizes", "64x1", "--min_steps", "2") == 2
  assert "exists: plan into another directory" in capsys.readouterr().err
  # --append adds runs (e.g. a held-out one) and refuses a name already planned.
  assert _plan(out, "--tokens", "80k", "--sizes", "64x1", "--min_steps", "2", "--role", "holdout", "--append") == 0
  plan = sweep.read_plan(str(out))
  assert len(plan["runs"]) == 5 and plan["runs"][-1]["role"] == "holdout"
  assert _plan(out, "--tokens", "80k", "--sizes", "64x1", "--min_steps", "2", "--append") == 2
  assert "already in" in capsys.readouterr().err


def _train(config_path, **changes):
  config = sweep.load_config_file(config_path)
  for key, value in changes.items():
    sweep.set_field(config, key, value)
  return train.run(config)


def test_runner_skips_finished_runs_resumes_interrupted_ones_and_records_diverged_ones(in_repo, tmp_path,
                                                                                      tokens_dir):
  out = str(tmp_path / "sweep")
  common = ["--min_steps", "5", "--set", f"data.tokens_dir='{tokens_dir}'", "--set", "train.global_batch_size=8",
            "--set", "checkpoint.every_steps=5", "--set", "log.noise_scale_every_steps=0",
            "--set", "eval.max_batches=2"]
  assert _plan(out, "--tokens", "10240", "--sizes", "64x1,64x2", *common) == 0  # 20 steps of 8 x 64 tokens
  # A third run whose guard stops it: every gradient norm is a "spike" once the 2-step window is full.
  assert _plan(out, "--tokens", "10240", "--sizes", "96x1", *common, "--append", "--set", "guard.policy='rollback'",
               "--set", "guard.max_rollbacks=0", "--set", "guard.window=2",
               "--set", "guard.grad_norm_spike_factor=1e-6") == 0
  plan = sweep.read_plan(out)
  finished, interrupted, diverging = plan["runs"]
  assert finished["fields"]["train.steps"] == 20
  _train(sweep.config_path(out, finished["name"]))
  _train(sweep.config_path(out, interrupted["name"]), **{"train.steps": 10})  # stopped half way
  assert [sweep.run_status(r) for r in plan["runs"]] == ["finished", "started", "pending"]

  lines = []
  statuses = sweep.run_local(out, plan, log=lines.append)
  assert statuses == {finished["name"]: "finished", interrupted["name"]: "finished", diverging["name"]: "diverged"}
  text = "\n".join(lines)
  assert f"resuming {interrupted['name']}" in text and f"running {diverging['name']}" in text
  assert f"running {finished['name']}" not in text  # skipped: it was not launched again
  with open(os.path.join(out, "logs", f"{interrupted['name']}.log")) as f:
    assert "resumed from step 10" in f.read()
  result = run_dir_lib.read_result(sweep.run_dir_of(interrupted))
  assert result["step"] == 20 and math.isfinite(result["val_loss"])
  with open(os.path.join(sweep.run_dir_of(diverging), "sweep_status.json")) as f:
    assert json.load(f)["status"] == "diverged"
  lines.clear()
  assert sweep.run_local(out, plan, log=lines.append) == statuses  # nothing left to run
  assert "3 done, 0 to run" in lines[0] and len(lines) == 1


def test_cluster_mode_writes_one_launch_command_per_unfinished_run(in_repo, tmp_path):
  out = str(tmp_path / "sweep")
  assert _plan(out, "--budgets", "2e10", "--sizes", "64x1,96x1,128x1", "--min_steps", "5") == 0
  plan = sweep.read_plan(out)
  done = plan["runs"][0]
  os.makedirs(sweep.run_dir_of(done))
  run_dir_lib.write_result(sweep.run_dir_of(done), {"step": done["fields"]["train.steps"], "val_loss": 3.0})
  assert sweep.main(["run", out, "--cluster", "tpu", "--launch_args", "--project p --zone z --accelerator v5p-8 "
                     "--name sweep"]) == 0
  with open(os.path.join(out, "launch.sh")) as f:
    lines = [line for line in f.read().splitlines() if line.startswith("./launch_tpu.sh")]
  assert len(lines) == 2
  for line, run in zip(lines, plan["runs"][1:]):
    assert line.startswith("./launch_tpu.sh --project p --zone z --accelerator v5p-8 --name sweep -- --config "
                           "configs/tiny.py")
    assert f"--config.model.d_model={run['shape']['d_model']}" in line
    assert f"--config.train.steps={run['fields']['train.steps']}" in line
    assert f"--config.train.run_dir={sweep.run_dir_of(run)}" in line
  assert sweep.main(["run", out, "--cluster", "slurm"]) == 0
  with open(os.path.join(out, "launch.sh")) as f:
    lines = [line for line in f.read().splitlines() if "sbatch" in line]
  assert len(lines) == 2 and lines[0].startswith("CONFIG=configs/tiny.py RUN_DIR=")
  assert "sbatch --job-name=" in lines[0] and "experiments/slurm_gpu.sbatch --config.model.d_model=" in lines[0]


# Losses of the synthetic sweep come from this law (the Besiroglu et al. constants).
LAW = dict(E=1.82, A=482.0, B=2085.0, alpha=0.35, beta=0.37)


def _law(n, d):
  return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]


def _fake_result(run, loss, metrics=False):
  directory = sweep.run_dir_of(run)
  os.makedirs(directory, exist_ok=True)
  compute = {k: run[k] for k in ("params_total", "params_non_embedding", "tokens", "compute_6nd", "compute")}
  run_dir_lib.write_result(directory, {"step": run["fields"]["train.steps"], "val_loss": loss, "compute": compute})
  if metrics:
    tokens_per_step = run["tokens"] / run["fields"]["train.steps"]
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
      for step in range(1, run["fields"]["train.steps"] + 1):
        d = step * tokens_per_step
        f.write(json.dumps({"step": step, "train/loss": _law(run["params_total"], d),
                            "compute/flops_6nd": 6 * run["params_total"] * d}) + "\n")


def test_fit_of_a_sweep_recovers_the_law_predicts_the_held_out_run_and_lists_excluded_runs(in_repo, tmp_path,
                                                                                          capsys):
  out = str(tmp_path / "sweep")
  sizes = "64x1,64x2,96x2,128x2,128x4"
  assert _plan(out, "--budgets", "4e12,1.6e13,6.4e13", "--sizes", sizes, "--min_steps", "5") == 0
  assert _plan(out, "--budgets", "2.56e14", "--sizes", "128x4", "--min_steps", "5", "--role", "holdout",
               "--append") == 0
  plan = sweep.read_plan(out)
  grid = [r for r in plan["runs"] if r["role"] == "grid"]
  rng = np.random.default_rng(0)
  diverged, unfinished = grid[1]["name"], grid[7]["name"]
  for i, run in enumerate(plan["runs"]):
    if run["name"] == unfinished:
      continue
    loss = math.nan if run["name"] == diverged else _law(run["params_total"], run["tokens"]) * (
        1 + 0.002 * rng.standard_normal())
    _fake_result(run, loss, metrics=i < 3)
  out_json = sweep.fit_sweep(out, plan, bootstrap=40, seed=0, log=print)
  printed = capsys.readouterr().out
  assert out_json["runs"]["diverged"] == [diverged] and out_json["runs"]["unfinished"] == [unfinished]
  assert f"excluded, diverged: {diverged}" in printed and f"left out, not finished: {unfinished}" in printed
  a3 = out_json["approach3"]
  assert a3["points"] == len(grid) - 2 and len(a3["excluded"]) == 1
  assert a3["alpha"]["value"] == pytest.approx(LAW["alpha"], abs=0.05)
  assert a3["beta"]["value"] == pytest.approx(LAW["beta"], abs=0.05)
  assert a3["alpha"]["low"] <= a3["alpha"]["value"] <= a3["alpha"]["high"]
  a2 = out_json["approach2"]
  assert len(a2["budgets"]) == 3 and a2["a"]["low"] is not None and a2["bootstrap"]["fits"] > 0
  # The true law's compute-optimal exponent is beta / (alpha + beta).
  assert a2["a"]["value"] == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]), abs=0.1)
  assert {"kaplan_L(N)", "kaplan_L(C)"} <= set(out_json)
  (prediction,) = out_json["holdout_predictions"]
  assert abs(prediction["relative_error"]) < 0.01
  assert prediction["predicted_interval"][0] <= prediction["predicted_loss"] <= prediction["predicted_interval"][1]
  assert "held out" in printed and "measured" in printed
  for name in ("fit.json", "runs.tsv", "isoflops.png", "frontier.png", "loss_curves.png"):
    assert os.path.getsize(os.path.join(out, "fit", name)) > 0
  with open(os.path.join(out, "fit", "runs.tsv")) as f:
    assert len(f.read().splitlines()) == len(plan["runs"]) + 1
  curve = sweep.loss_curve(plan["runs"][0], smooth=1)
  assert curve is not None and np.all(np.diff(curve[0]) > 0) and np.all(np.diff(curve[1]) < 0)


def test_fit_refuses_too_few_runs_and_names_what_is_missing(in_repo, tmp_path, capsys):
  out = str(tmp_path / "sweep")
  assert sweep.main(["fit", out]) == 2
  assert "no plan at" in capsys.readouterr().err
  assert _plan(out, "--budgets", "1e12,4e12", "--sizes", "64x1,96x2", "--min_steps", "5") == 0
  plan = sweep.read_plan(out)
  assert sweep.main(["fit", out]) == 2
  assert "no finished grid runs" in capsys.readouterr().err
  for run in plan["runs"]:
    _fake_result(run, _law(run["params_total"], run["tokens"]))
  assert sweep.main(["fit", out, "--bootstrap", "0"]) == 2
  err = capsys.readouterr().err
  # Two sizes per budget: no IsoFLOP parabola; the message names the budgets and what they lack.
  assert "an IsoFLOP frontier needs at least 2 budgets with a minimum" in err
  assert "2 distinct model sizes" in err and "C=1e+12" in err
