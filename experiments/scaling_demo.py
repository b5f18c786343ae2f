"""The scaling-law demo: an IsoFLOP sweep on the demo corpus, its fits, and a held-out larger run predicted.

    python -m experiments.scaling_demo [--out sweeps/demo]

1. Tokenizes the demo corpus with a 1024-piece vocabulary (DIR/../demo_tokens; skipped when present).
2. Plans 3 budgets x 4 model sizes (configs/scaling_demo.py, D = C / 6N) and runs them one after another.
3. Fits Kaplan, Approach 2 and Approach 3 on them, takes Approach 3's compute-optimal N at the next budget
   (HOLDOUT_BUDGET, twice the largest), plans that run with the nearest model shape and runs it.
4. Fits again: the held-out run's measured final loss against the loss the grid's law predicted for it.
Every step is resumable: run the command again after an interruption and finished runs are skipped. About
50 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from experiments import scaling as sweep
from lm import metrics as metrics_lib
from lm import scaling

BASE = "configs/scaling_demo.py"
BUDGETS = (3e12, 6e12, 1.2e13)
SIZES = ("64x1", "96x1", "128x1", "128x2")  # 119k, 218k, 344k, 558k parameters
HOLDOUT_BUDGET = 2.4e13
# Shapes the held-out run may take: widths in steps of the head width, 1-4 layers.
HOLDOUT_WIDTHS = range(64, 321, 32)
HOLDOUT_DEPTHS = range(1, 5)
TOLERANCE = 0.05


def tokenize(tokens_dir: str, tokenizer_dir: str) -> None:
  if os.path.exists(os.path.join(tokens_dir, "manifest.json")):
    print(f"tokens: {tokens_dir} exists")
    return
  flags = ["--config", "configs/tokenize/demo.py", "--config.tokenizer.vocab_size=1024",
           f"--config.tokenizer.output_dir={tokenizer_dir}", f"--config.shards.output_dir={tokens_dir}"]
  for module in ("data.tokenizer", "data.shards"):
    subprocess.run([sys.executable, "-m", module, *flags], check=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.scaling_demo", description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="sweeps/demo", help="the sweep directory")
  parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits of the fits")
  args = parser.parse_args(argv)
  start = time.time()
  tokens_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "demo_tokens")
  tokenize(tokens_dir, os.path.join(os.path.dirname(os.path.abspath(args.out)), "demo_tokenizer"))
  settings = {"data.tokens_dir": tokens_dir}
  base = sweep.derive_config(BASE, settings)
  if not os.path.exists(os.path.join(args.out, sweep.PLAN)):
    shapes = sweep.resolve_sizes(base, SIZES, aspect=base.model.d_model / base.model.num_layers)
    runs = sweep.plan_runs(BASE, settings, shapes, budgets=BUDGETS, out_dir=args.out, warmup_fraction=0.1,
                           min_steps=20)
    sweep.write_plan(args.out, BASE, runs, append=False)
    print(sweep.plan_table(runs))
  plan = sweep.read_plan(args.out)
  sweep.run_local(args.out, {**plan, "runs": [r for r in plan["runs"] if r["role"] == "grid"]})

  if not any(r["role"] == "holdout" for r in plan["runs"]):
    runs = sweep.collect(plan)
    finished = [i for i, state in enumerate(runs.status) if state == "finished"]
    law = scaling.fit_parametric(runs.n[finished], runs.d[finished], runs.loss[finished])
    n_opt = scaling.compute_optimal(law, HOLDOUT_BUDGET).n_opt
    candidates = [sweep.make_shape(base, w, d) for w in HOLDOUT_WIDTHS for d in HOLDOUT_DEPTHS]
    shape = sweep.nearest_shape(candidates, n_opt)
    print(f"held-out run: Approach 3 gives N_opt {n_opt:,.0f} at C = {HOLDOUT_BUDGET:.3g}; nearest shape "
          f"{shape.text} ({shape.params_total:,} parameters)")
    runs = sweep.plan_runs(BASE, settings, [shape], budgets=(HOLDOUT_BUDGET,), out_dir=args.out,
                           warmup_fraction=0.1, min_steps=20, role="holdout")
    plan = sweep.write_plan(args.out, BASE, runs, append=True)
    print(sweep.plan_table(runs))
  sweep.run_local(args.out, plan)
  out = sweep.fit_sweep(args.out, plan, bootstrap=args.bootstrap, seed=0)
  ok = True
  for prediction in out["holdout_predictions"]:
    error = prediction["relative_error"]
    within = error is not None and abs(error) <= TOLERANCE
    ok &= within
    measured = (f"measured {prediction['measured_loss']:.4f}, error {100 * error:+.2f}%" if error is not None
                else f"not measured ({prediction['status']})")
    print(f"held-out {prediction['run']}: predicted {prediction['predicted_loss']:.4f}, {measured} "
          f"({'within' if within else 'NOT within'} {TOLERANCE:.0%})")
  print(f"scaling demo done in {metrics_lib.format_duration(time.time() - start)}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
