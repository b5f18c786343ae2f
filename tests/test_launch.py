"""The whole path through `python -m lm.launch`: corpus, tokenizer, training, checkpoints, eval, sample, resume."""

import json
import os
import re

import pytest


@pytest.fixture
def launch_ok(launch):
  """Runs lm.launch on a 4 x 2 (data x fsdp) mesh, asserts success and returns its stdout."""

  def run(run_dir, *overrides):
    result = launch(run_dir, "--config.mesh.fsdp=2", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout

  return run


def test_demo_path_runs_end_to_end_and_resumes(launch_ok, tmp_path):
  run_dir = tmp_path / "run"
  out = launch_ok(run_dir)
  assert "mesh {'data': 4, 'fsdp': 2, 'expert': 1, 'tensor': 1}" in out
  assert "tokenizer trained" in out
  assert re.search(r"step +20/20 +loss [\d.]+ .*tokens/s [\d,]+ +mfu [\d.]+% +eta", out)
  final = re.search(r"^final: step=(\d+) val_loss=([\d.]+) unigram_entropy=([\d.]+)$", out, re.M)
  assert final and final.group(1) == "20"
  assert float(final.group(2)) < 6.0

  for name in ("config.json", "tokenizer/spm.model", "tokenizer/tokenizer.json", "tokens/manifest.json",
               "metrics.jsonl", "samples.txt"):
    assert (run_dir / name).exists(), name
  assert any(name.startswith("events") for name in os.listdir(run_dir / "events"))
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["10", "20"]
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train_records] == list(range(1, 21))  # every step
  for key in ("train/loss", "train/learning_rate", "train/grad_norm", "train/update_ratio", "train/loss_window_std",
              "grad_norm/layer_00", "grad_norm/layer_01", "grad_norm/embed", "perf/tokens_per_second", "perf/mfu",
              "perf/step_seconds", "perf/data_wait_seconds", "perf/checkpoint_seconds", "perf/eval_seconds",
              "memory/host_peak_rss_bytes"):
    assert all(key in r for r in train_records), key
  assert all(r["perf/step_seconds"] >= r["perf/data_wait_seconds"] >= 0 for r in train_records)
  assert all(r["memory/host_peak_rss_bytes"] > 1e6 for r in train_records)
  run_record = json.loads((run_dir / "run.json").read_text())
  assert len(run_record["git_revision"] or "0" * 40) == 40 and run_record["launches"][0]["resumed_from"] is None
  basis = run_record["launches"][0]["mfu_basis"]
  assert basis["flops_per_token"] > 0 and basis["peak_flops_per_device"] > 0 and basis["formula"].startswith("6N")
  assert [r["step"] for r in records if "eval/loss" in r] == [10, 20]
  # Validation loss per source, and the realised mixture of the rows trained on so far.
  assert all("eval/code/loss" in r and "eval/docs/loss" in r for r in records if "eval/loss" in r)
  assert all(abs(r["data/code/share"] + r["data/docs/share"] - 1.0) < 1e-9 for r in train_records)
  assert "def read_config(path):" in (run_dir / "samples.txt").read_text()

  # Same command again: resumes, does not train again.
  out = launch_ok(run_dir)
  assert "resumed from step 20" in out and "tokenizer reused" in out
  assert "step     5/20" not in out
  assert re.search(r"^final: step=20 ", out, re.M)

  # Longer run on the same directory continues from the checkpoint.
  out = launch_ok(run_dir, "--config.train.steps=25")
  assert "resumed from step 20" in out
  assert re.search(r"step +25/25", out) and "step     5/25" not in out
  assert "config changed since the last launch of this run: train.steps 20 -> 25" in out
  launches = json.loads((run_dir / "run.json").read_text())["launches"]
  assert [launch["resumed_from"] for launch in launches] == [None, 20, 20]
  assert launches[2]["config_changes"] == {"train.steps": [20, 25]}
  events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
  assert any(e["event"] == "config_changed" and e["changes"] == {"train.steps": [20, 25]} for e in events)
  assert [e["step"] for e in events if e["event"] == "resumed"] == [20, 20]


def test_relaunch_with_another_model_is_refused(launch_ok, launch, tmp_path):
  run_dir = tmp_path / "run"
  launch_ok(run_dir, "--config.train.steps=2")
  result = launch(run_dir, "--config.mesh.fsdp=2", "--config.model.d_model=32")
  assert result.returncode != 0
  assert "model.d_model 64 -> 32 (saved -> now)" in result.stderr
