"""Continued pre-training with and without replay, and context extension from 256 to 1024, on the demo model.

    python -m experiments.continued_pretraining [--out runs/continued]

1. base: configs/demo_code.py, the demo model trained on the code source only (rows of 256).
2. replay / no_replay: configs/continue_demo.py, the base continued on the documentation source with 50%
   of every batch replaying code, and without replay. Both evaluate both domains from step 0.
3. extend_yarn / extend_linear / extend_plain: configs/extend_demo.py, the base continued on rows of 1024
   with YaRN x4, linear position interpolation x4, and plain RoPE; continued_256, the control: the same
   steps and tokens on rows of 256, so that what the longer rows bought is told from more training.
4. Loss by position on rows of 1024 ids cut from the validation code documents, and the retrieval
   probe at 256, 512 and 1024 ids, for the base model and the extended ones.

Writes DIR/report.md (the tables), DIR/results.json and DIR/*.png. Every run is skipped when its run
directory holds a result already, so the command resumes after an interruption. About 30 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENSIONS = {  # name -> RoPE overrides of configs/extend_demo.py
    "extend_yarn": ["--config.model.rope_scaling=yarn"],
    "extend_linear": ["--config.model.rope_scaling=linear"],
    "extend_plain": ["--config.model.rope_scaling=none", "--config.model.rope_scaling_factor=1.0"],
    # The control: as many more steps and tokens on the same data, at the base's 256.
    "continued_256": ["--config.model.rope_scaling=none", "--config.model.rope_scaling_factor=1.0",
                      "--config.data.seq_len=256", "--config.train.global_batch_size=16"],
}
POSITION_LEN, BUCKET = 1024, 128


def launch(name: str, config: str, out: str, *overrides: str) -> str:
  """Runs `python -m lm.launch` for one run (skipped when it has finished before); returns its run dir."""
  run_dir = os.path.join(out, name)
  if os.path.exists(os.path.join(run_dir, "result.json")):
    print(f"{name}: {run_dir} has finished already")
    return run_dir
  command = [sys.executable, "-m", "lm.launch", "--config", config, f"--config.train.run_dir={run_dir}", *overrides]
  print(f"{name}: {' '.join(command[1:])}", flush=True)
  start = time.time()
  subprocess.run(command, cwd=REPO, check=True)
  print(f"{name}: done in {time.time() - start:.0f}s", flush=True)
  return run_dir


def eval_curves(run_dir: str) -> dict[str, list[tuple[int, float]]]:
  """eval/... loss series (step, value) of a run's metrics.jsonl."""
  from lm import report  # pylint: disable=import-outside-toplevel
  metrics = report.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  return {name: [(int(step), float(value)) for step, value in zip(*series)]
          for name, series in metrics.scalars.items() if name.startswith("eval/") and name.endswith("/loss")}


def long_context_results(run_dirs: dict[str, str], tokens_dir: str) -> tuple[dict, dict, int]:
  """(loss by position, retrieval probe, documents) of each run's final model."""
  import jax  # pylint: disable=import-outside-toplevel
  from data import shards  # pylint: disable=import-outside-toplevel
  from lm import load  # pylint: disable=import-outside-toplevel
  from lm import long_context  # pylint: disable=import-outside-toplevel
  from lm import sharding  # pylint: disable=import-outside-toplevel
  positions, retrieval, documents = {}, {}, 0
  for name, run_dir in run_dirs.items():
    run = load.load_run(run_dir, log=lambda _: None)
    tokens = shards.open_tokens(tokens_dir, tokenizer_dir=os.path.join(run_dir, "tokenizer"))
    code = [tokens.splits["code"]["validation"]]
    put = lambda a, r=run: sharding.from_full_host_array(a, r.trainer.batch_sharding)  # noqa: E731
    batch = sharding.data_parallel_size(run.trainer.mesh) * 4
    rows = long_context.long_document_rows(code, POSITION_LEN, max_documents=0)
    documents = len(rows["inputs"])
    positions[name] = long_context.loss_by_position(run.trainer.token_scores, run.params, rows, BUCKET, batch, put)
    filler = long_context.filler_ids(code, 8 * POSITION_LEN)
    retrieval[name] = long_context.retrieval_probe(run.trainer.token_scores, run.params, run.tokenizer, filler,
                                                   [256, 512, 1024], [0.0, 0.25, 0.5, 0.75, 1.0], trials=20,
                                                   batch_size=batch, put=put)
    print(f"{name}: positions 1-128 {positions[name][0]['loss']:.3f}, 897-1024 {positions[name][-1]['loss']:.3f}",
          flush=True)
    del run
    jax.clear_caches()
  return positions, retrieval, documents


def forgetting_table(curves: dict[str, dict]) -> str:
  lines = ["| run | step | code loss (original) | docs loss (new) |", "|---|---:|---:|---:|"]
  for name, series in curves.items():
    original, new = dict(series["eval/original/loss"]), dict(series["eval/new/loss"])
    for step in sorted(original):
      if step in (min(original), max(original)) or step % 50 == 0:
        lines.append(f"| {name} | {step} | {original[step]:.4f} | {new[step]:.4f} |")
  return "\n".join(lines)


def plot_forgetting(curves: dict[str, dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for name, series in curves.items():
    for ax, key, title in ((axes[0], "eval/original/loss", "original domain (code): forgetting"),
                           (axes[1], "eval/new/loss", "new domain (docs): adaptation")):
      steps, values = zip(*series[key])
      ax.plot(steps, values, marker="o", label=name)
      ax.set_title(title)
      ax.set_xlabel("step of the continued run")
      ax.set_ylabel("validation loss (nats/token)")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_positions(positions: dict[str, list[dict]], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for name, buckets in positions.items():
    ax.plot([(b["start"] + b["stop"]) / 2 for b in buckets], [b["loss"] for b in buckets], marker="o", label=name)
  ax.axvline(256, color="grey", linestyle=":", label="base training length")
  ax.set_xlabel("position in the document")
  ax.set_ylabel(f"loss per {BUCKET}-position bucket (nats/token)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.continued_pretraining", description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/continued", help="directory of the runs and the report")
  args = parser.parse_args(argv)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  start = time.time()

  base = launch("base", "configs/demo_code.py", out)
  source = [f"--config.train.init_from={base}", f"--config.data.tokens_dir={os.path.join(base, 'tokens')}"]
  continued = {"replay 50%": launch("replay", "configs/continue_demo.py", out, *source),
               "no replay": launch("no_replay", "configs/continue_demo.py", out, *source,
                                   "--config.data.replay_fraction=0.0")}
  extended = {name: launch(name, "configs/extend_demo.py", out, *source, *flags) for name, flags in EXTENSIONS.items()}

  curves = {name: eval_curves(run_dir) for name, run_dir in continued.items()}
  positions, retrieval, documents = long_context_results({"base (256)": base, **extended}, os.path.join(base, "tokens"))

  from lm import long_context  # pylint: disable=import-outside-toplevel
  plot_forgetting(curves, os.path.join(out, "continued_forgetting.png"))
  plot_positions(positions, os.path.join(out, "extension_loss_by_position.png"))
  final = {name: {k: v[-1][1] for k, v in series.items()} for name, series in curves.items()}
  beyond = {name: sum(b["loss"] * b["tokens"] for b in buckets if b["start"] > 256)
            / sum(b["tokens"] for b in buckets if b["start"] > 256) for name, buckets in positions.items()}
  report = "\n\n".join([
      "## Continued pre-training: code model adapted to docs", forgetting_table(curves),
      f"## Loss by position ({documents} validation code documents, rows of {POSITION_LEN})",
      long_context.format_loss_by_position(positions),
      "Loss over positions 257-1024: " + ", ".join(f"{n} {v:.4f}" for n, v in beyond.items()),
      "## Retrieval probe (20 trials per cell; acc: greedy decoding gives the 5-digit key; gain: its "
      "log-likelihood minus that with another key planted, nats)",
      long_context.format_retrieval(retrieval)])
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"continued_final": final, "curves": curves, "positions": positions, "beyond_256": beyond,
               "retrieval": retrieval, "documents": documents}, f, indent=1)
  print(report)
  print(f"\nwrote {out}/report.md, results.json and two PNGs in {time.time() - start:.0f}s")
  less_forgetting = final["replay 50%"]["eval/original/loss"] < final["no replay"]["eval/original/loss"]
  extended_better = all(beyond[name] < beyond[control] for name in EXTENSIONS if name.startswith("extend_")
                        for control in ("base (256)", "continued_256"))
  print(f"replay forgets less: {less_forgetting}; every extension beats the base and the 256 control past 256: "
        f"{extended_better}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
