"""experiments.bench_loader: the quick run prints its three tables and writes positive, finite numbers.

No speed is asserted here: the targets belong to the benchmark's own output.
"""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_prints_tables_and_writes_rows(tmp_path):
  output = tmp_path / "rows.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # The benchmark measures the devices a plain process has, not the 8 simulated ones of the other tests.
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
  result = subprocess.run(
      [sys.executable, "-m", "experiments.bench_loader", "--quick", "--train_steps=3", "--workers=0,2",
       f"--output_json={output}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]

  rows = json.loads(output.read_text())
  settings = [(r["part"], r["setting"]) for r in rows]
  assert [s for p, s in settings if p == "tokenize"] == [
      "encode (this process)", "shards.write, 1 worker", f"shards.write, all cores (num_workers=0: {os.cpu_count()})"]
  assert [s for p, s in settings if p == "loader"] == [
      "Stream.batch(step), direct", "TrainIterator, num_workers=0", "TrainIterator, num_workers=2",
      "skip: first batch of TrainIterator(step=1,000,000)"]
  assert [p for p, _ in settings].count("train") == 1
  for row in rows:
    for key, value in row.items():
      if key in ("part", "setting", "platform"):
        continue
      if key == "workers" and row["part"] == "loader":
        assert value >= 0, row
        continue
      assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, row)
  train = next(r for r in rows if r["part"] == "train")
  assert train["steps"] == 3
  loader_speeds = [r for r in rows if r["part"] == "loader" and "tokens_per_s" in r]
  for row in loader_speeds:
    assert math.isclose(row["ratio_to_train"], row["tokens_per_s"] / train["tokens_per_s"])
    assert row["loss_tokens_per_s"] <= row["tokens_per_s"]

  for heading in ("Tokenization:", "Loader:", "Training:"):
    assert heading in result.stdout
  for _, setting in settings:
    assert setting in result.stdout
  assert "x train" in result.stdout
  assert "done in" in result.stderr and "done in" not in result.stdout  # progress goes to stderr
