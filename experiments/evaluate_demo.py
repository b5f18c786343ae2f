"""The evaluation table of a trained run: perplexity and bits per byte per source, and the task fixtures.

    python -m lm.launch --config configs/demo.py          # trains runs/demo
    python -m experiments.evaluate_demo --run runs/demo    # prints the table (markdown)

The task files are generated from the validation split of the embedded corpus (documents
the run never trained on) into RUN_DIR/tasks/ with `lm.tasks.make_fixtures`: the right
choice is the text that follows in the document, the others are its words shuffled. The
same checkpoint is scored at 0 shots and at `--shots` shots, and the model at random
initialisation is scored alongside, as the chance reference.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from data import corpus
from lm import evaluate
from lm import load
from lm import sharding
from lm import tasks


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.evaluate_demo")
  parser.add_argument("--run", default="runs/demo")
  parser.add_argument("--items", type=int, default=150, help="items per task fixture")
  parser.add_argument("--shots", type=int, default=3)
  args = parser.parse_args(argv)

  run = load.load_run(args.run, log=lambda m: print(m, file=sys.stderr))
  config = run.config
  _, validation_docs = corpus.load(config.data.path, config.data.validation_fraction, config.data.split_seed)
  paths = tasks.make_fixtures(validation_docs, os.path.join(run.run_dir, "tasks"), args.items, seed=0)
  put = lambda a: sharding.from_full_host_array(a, run.trainer.batch_sharding)  # noqa: E731
  at_init = run.trainer.init_state(jax.random.PRNGKey(config.train.seed)).params

  print(f"{run.run_dir}, step {run.step}\n")
  print("| source | loss (nats/token) | perplexity | bits per byte | tokens |")
  print("|---|---|---|---|---|")
  for name, r in evaluate.perplexity_of_tokens(run, os.path.join(run.run_dir, "tokens"), "validation", 0).items():
    print(f"| {name} | {r['loss']:.3f} | {r['perplexity']:.1f} | {r['bits_per_byte']:.3f} | {r['tokens']:,.0f} |")

  print(f"\n| task ({args.items} items) | chance | random init | 0-shot | {args.shots}-shot | "
        f"0-shot acc_norm | items truncated |")
  print("|---|---|---|---|---|---|---|")
  for task, path in paths.items():
    def score(params, shots):
      return evaluate.evaluate_task(task, path, tokenizer=run.tokenizer, token_scores=run.trainer.token_scores,
                                    params=params, seq_len=config.data.seq_len,
                                    batch_size=config.train.global_batch_size, put=put, shots=shots)
    zero, few, init = score(run.params, 0), score(run.params, args.shots), score(at_init, 0)
    norm = f"{zero['acc_norm']:.3f}" if "acc_norm" in zero else "–"
    truncated = few["truncated"][0] if few["truncated"] else 0
    print(f"| {task} | {zero['chance']:.3f} | {init['acc']:.3f} | {zero['acc']:.3f} | {few['acc']:.3f} | {norm} | "
          f"{truncated} ({args.shots}-shot) |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
