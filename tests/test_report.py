"""lm.report on a synthetic run directory: metrics parsing, the summary, the plots and the CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lm import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 120
LAYERS = 4


def good_loss(step: int) -> float:
  return 3.0 + 5.0 * math.exp(-step / 30.0) + 0.01 * math.sin(step)


def bad_loss(step: int) -> float:
  """The losses of the steps that the rollback at step 80 throws away (61..80 are replayed)."""
  return 50.0 + step


def eval_loss(step: int, source: str | None = None, bad: bool = False) -> float:
  offset = {None: 0.0, "code": -0.3, "docs": 0.6}[source]
  return good_loss(step) + 0.1 + offset + (10.0 if bad else 0.0)


def scalar_line(step: int, bad: bool) -> dict:
  loss = bad_loss(step) if bad else good_loss(step)
  line = {
      "step": step, "time": 1000.0 + step, "train/loss": loss, "train/total_loss": loss + 0.01,
      "train/grad_norm": 2.0 * math.exp(-step / 50.0) + 0.2, "train/learning_rate": 1e-3 * min(1.0, step / 20),
      "train/update_ratio": 1e-3, "grad_norm/embed": 0.1 + 0.001 * step,
      "perf/tokens_per_second": 4000.0 + 10.0 * (step % 7), "perf/mfu": 0.03, "perf/step_seconds": 1.0,
      "perf/data_wait_seconds": 0.02, "memory/host_rss_bytes": 1.0e9 + 1e6 * step,
      "memory/host_peak_rss_bytes": 1.2e9 + 1e6 * step, "data/code/share": 0.5, "data/code/epochs": step / 1000,
  }
  for layer in range(LAYERS):
    line[f"grad_norm/layer_{layer:02d}"] = (layer + 1) * 0.1 * math.exp(-step / 60.0)
  if step % 50 == 0:
    line["perf/checkpoint_seconds"] = 2.0
  return line


def eval_line(step: int, bad: bool) -> dict:
  return {"step": step, "time": 1000.5 + step, "eval/loss": eval_loss(step, bad=bad),
          "eval/perplexity": math.exp(eval_loss(step, bad=bad)), "eval/code/loss": eval_loss(step, "code", bad),
          "eval/docs/loss": eval_loss(step, "docs", bad), "perf/eval_seconds": 5.0,
          "perf/step_seconds": 6.0}  # a step's wall time holds the evaluation after it


def make_run(root, full: bool = True) -> tuple[str, int]:
  """A run directory of 120 steps; returns (its path, the 1-based line number of the first malformed line).

  full: steps 1..80 with 61..80 logged with bad values, a skip at 57, a rollback at 80 to 60, steps
  61..120 logged again, eval every 25 steps (75 logged twice), 2 malformed lines, config, run.json,
  checkpoints and samples. Otherwise only train/loss lines and nothing else.
  """
  run_dir = str(root)
  os.makedirs(run_dir, exist_ok=True)
  lines: list[str] = []
  if not full:
    lines = [json.dumps({"step": s, "time": 1000.0 + s, "train/loss": good_loss(s)}) for s in range(1, STEPS + 1)]
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
      f.write("\n".join(lines) + "\n")
    return run_dir, -1

  def add(step: int, bad: bool) -> None:
    lines.append(json.dumps(scalar_line(step, bad)))
    if step % 25 == 0:
      lines.append(json.dumps(eval_line(step, bad)))
    if step == 57:
      lines.append(json.dumps({"step": 57, "time": 1057.1, "event": "skip", "batch": 57, "reason": "loss spike",
                               "loss": 12.5, "grad_norm": 40.0}))

  for step in range(1, 81):
    add(step, bad=step > 60)
    if step == 30:
      lines.append('{"step": 30, "time": 10')  # a line cut off mid-write
      first_malformed = len(lines)
    if step == 40:
      lines.append("[1, 2, 3]")
  lines.append(json.dumps({"step": 80, "time": 1080.5, "event": "rollback", "restored_step": 60,
                           "reason": "loss spike"}))
  for step in range(61, STEPS + 1):
    add(step, bad=False)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")

  config = {
      "model": {"d_model": 64, "num_layers": LAYERS, "vocab_size": 512, "num_heads": 4},
      "data": {"seq_len": 128},
      "train": {"steps": STEPS, "global_batch_size": 8},
      "mesh": {}, "optim": {}, "checkpoint": {}, "eval": {}, "log": {}, "guard": {},
  }
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(config, f)
  run_info = {"git_revision": "abc1234def5678", "git_dirty": True, "launches": [
      {"time": 1000.0, "resumed_from": None, "config_changes": {}},
      {"time": 1100.0, "resumed_from": 100, "config_changes": {"optim.peak_learning_rate": [0.001, 0.0005]},
       "mfu_basis": {"flops_per_token": 2.67e7, "formula": "6N + attention", "peak_flops_per_device": 1.2e11,
                     "peak_source": "measured"}},
  ]}
  with open(os.path.join(run_dir, "run.json"), "w") as f:
    json.dump(run_info, f)
  for step in (50, 100):
    os.makedirs(os.path.join(run_dir, "checkpoints", str(step)))
  os.makedirs(os.path.join(run_dir, "checkpoints", "120.orbax-checkpoint-tmp-1"))  # an unfinished save
  with open(os.path.join(run_dir, "samples.txt"), "w") as f:
    f.write("=== step 100\nold sample\n")
    f.write("=== step 120\n" + "\n".join(f"line {i}" for i in range(1, 9)) + "\n")
  return run_dir, first_malformed


@pytest.fixture
def run(tmp_path):
  return make_run(tmp_path / "run")


def test_read_metrics_keeps_last_value_per_step_and_counts_malformed_lines(run):
  run_dir, first_malformed = run
  metrics = report.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  steps, loss = metrics.scalars["train/loss"]
  np.testing.assert_array_equal(steps, np.arange(1, STEPS + 1))
  assert steps.dtype == np.int64 and loss.dtype == np.float64
  # Steps 61..80 were logged twice: the replay after the rollback (logged later) wins.
  np.testing.assert_allclose(loss, [good_loss(s) for s in range(1, STEPS + 1)])
  eval_steps, eval_values = metrics.scalars["eval/code/loss"]
  np.testing.assert_array_equal(eval_steps, [25, 50, 75, 100])
  np.testing.assert_allclose(eval_values[2], eval_loss(75, "code"))
  assert "time" not in metrics.scalars
  assert [e["event"] for e in metrics.events] == ["skip", "rollback"]
  assert metrics.events[1]["restored_step"] == 60
  assert "loss" not in metrics.scalars  # event details are not metrics
  assert metrics.malformed == 2
  assert metrics.first_malformed_line == first_malformed


def test_read_metrics_skips_lines_without_integer_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 3.0}\n\n{"train/loss": 2.0}\n{"step": "2", "train/loss": 1.0}\n'
                  '{"step": 2.0, "train/loss": NaN, "note": "text", "flag": true}\n"str"\n')
  metrics = report.read_metrics(str(path))
  assert metrics.malformed == 3 and metrics.first_malformed_line == 3
  steps, values = metrics.scalars["train/loss"]
  np.testing.assert_array_equal(steps, [1, 2])
  assert values[0] == 3.0 and np.isnan(values[1])
  assert set(metrics.scalars) == {"train/loss"}


def test_summary(run):
  run_dir, first_malformed = run
  summary = report.summarize(run_dir)
  print(summary)
  assert "git abc1234, dirty" in summary
  assert "launches: 2 (resumed from 100)" in summary
  assert "optim.peak_learning_rate 0.001 -> 0.0005" in summary
  assert "MFU basis: 26.7 MFLOP/token (6N + attention) against 120 GFLOP/s per device (measured)" in summary
  assert "d_model 64, 4 layers, vocab 512" in summary
  assert "8 (1,024 tokens/step)" in summary
  assert f"progress: step {STEPS} / {STEPS}, {STEPS * 1024:,} tokens" in summary
  assert f"last {good_loss(STEPS):.3f}" in summary
  assert f"eval loss: last {eval_loss(100):.4f} at step 100" in summary
  assert f"code {eval_loss(100, 'code'):.4f}, docs {eval_loss(100, 'docs'):.4f}" in summary
  assert "median 4,030 tokens/s" in summary and "MFU median 3.0%" in summary
  # 120 s of steps + 4 * 5 s of eval: 2.4 s waiting for data, 4 s saving checkpoints.
  assert "time: compute 81%, data wait 2%, checkpoint 3%, eval 14%" in summary
  assert "host RSS" in summary
  assert "skip at step 57 batch 57: loss spike" in summary
  assert "rollback at step 80 -> 60" in summary
  assert "events: 2" in summary
  assert f"2 malformed lines skipped (first at line {first_malformed})" in summary
  assert "checkpoints: 50, 100\n" in summary + "\n"
  assert "sample (step 120):\n  line 1\n  line 2\n  line 3\n  line 4\n  line 5\n" in summary + "\n"
  assert "line 6" not in summary and "old sample" not in summary


def test_summary_without_config_or_run_info(tmp_path):
  run_dir, _ = make_run(tmp_path / "bare", full=False)
  summary = report.summarize(run_dir)
  assert summary.splitlines()[0] == f"run: {run_dir}"
  assert "model:" not in summary and "eval loss" not in summary and "malformed" not in summary
  assert f"progress: step {STEPS}\n" in summary


def check_png(path: str, min_bytes: int = 0) -> None:
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  assert os.path.getsize(path) > min_bytes
  with Image.open(path) as image:
    assert image.size == (800, 450)


def test_plot(run, tmp_path):
  run_dir, _ = run
  out = str(tmp_path / "out")
  written = report.plot(run_dir, out)
  names = ["loss.png", "grad_norm.png", "throughput.png", "memory.png"]
  assert written == [os.path.join(out, n) for n in names]
  for path in written:
    check_png(path, min_bytes=5000)


def test_plot_with_only_train_loss(tmp_path):
  run_dir, _ = make_run(tmp_path / "bare", full=False)
  written = report.plot(run_dir, os.path.join(run_dir, "report"))
  assert [os.path.basename(p) for p in written] == ["loss.png", "grad_norm.png", "throughput.png"]
  for path in written:
    check_png(path)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "lm.report", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_cli(run):
  run_dir, _ = run
  result = run_cli(run_dir)
  assert result.returncode == 0, result.stderr
  out = os.path.join(run_dir, "report")
  for name in ("loss.png", "grad_norm.png", "throughput.png", "memory.png"):
    check_png(os.path.join(out, name))
  with open(os.path.join(out, "summary.txt")) as f:
    summary = f.read()
  assert summary == result.stdout
  assert f"plots: {os.path.join(out, 'loss.png')}" in summary


def test_cli_errors(tmp_path):
  missing = str(tmp_path / "no_such_run")
  result = run_cli(missing)
  assert result.returncode == 2
  assert result.stderr.startswith("error:") and missing in result.stderr
  empty = tmp_path / "empty_run"
  empty.mkdir()
  result = run_cli(str(empty))
  assert result.returncode == 2
  assert result.stderr.startswith("error:") and str(empty) in result.stderr and "metrics.jsonl" in result.stderr


def test_import_is_light():
  code = "import sys, lm.report; print('jax' in sys.modules, 'matplotlib' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.stdout.split() == ["False", "False"], result.stderr
