"""Curation speed: documents per second per core for every stage, and MinHash against datasketch.

    python -m experiments.bench_curation [--max_modules 250] [--minhash_docs 3000]

Builds the offline demo crawl (`data.demo_crawl`), runs the whole pipeline with one
worker process so that each stage's CPU time is its own, and prints one row per stage:
documents in, CPU seconds, documents per second on one core. Global stages count the
time of their per-document part (features, applying decisions) and of the central
decision. Then the MinHash table of `experiments.bench_minhash`: our signatures against
datasketch's on the same documents, speed and agreement of the Jaccard estimates.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app
from absl import flags

from configs.curate import demo as demo_config
from data import curate
from data import demo_crawl
from experiments import bench_minhash

_MAX_MODULES = flags.DEFINE_integer("max_modules", 250, "Standard-library modules rendered as crawl pages.")
_MINHASH_DOCS = flags.DEFINE_integer("minhash_docs", 3000, "Documents in the MinHash comparison.")


def stage_table(max_modules: int) -> list[dict]:
  """One row per stage of the demo pipeline run on one core."""
  with tempfile.TemporaryDirectory() as directory:
    crawl_dir = os.path.join(directory, "crawl")
    demo_crawl.build(crawl_dir, seed=0, max_modules=max_modules)
    config = demo_config.get_config()
    for spec in (list(config.sources) + list(config.quality_classifier.reference)
                 + list(config.quality_classifier.web) + list(config.perplexity.reference)):
      spec.paths = spec.paths.replace(demo_config.INPUT, crawl_dir, 1)
    config.decontamination.eval_files = tuple(p.replace(demo_config.INPUT, crawl_dir, 1)
                                              for p in config.decontamination.eval_files)
    config.output_dir = os.path.join(directory, "out")
    config.num_workers = 1
    start = time.time()
    report = curate.run(config, log=lambda line: None)
    wall = time.time() - start
    data = report.to_json(["read"] + list(config.pipeline))
  rows = []
  for name in config.pipeline:
    stage = data["stages"][name]
    rows.append({"stage": name, "docs_in": stage["total"]["docs_in"], "removed": stage["total"]["docs_removed"],
                 "modified": stage["total"]["docs_modified"], "cpu_s": stage["cpu_seconds"],
                 "docs_per_s_per_core": stage["docs_per_cpu_second"]})
  rows.append({"stage": "whole run (wall, 1 worker)", "docs_in": data["stages"]["read"]["total"]["docs_in"],
               "removed": None, "modified": None, "cpu_s": round(wall, 2),
               "docs_per_s_per_core": round(data["stages"]["read"]["total"]["docs_in"] / wall, 1)})
  return rows


def main(argv) -> None:
  del argv
  rows = stage_table(_MAX_MODULES.value)
  print(f"{'stage':<28} {'docs in':>8} {'removed':>8} {'modified':>8} {'CPU s':>8} {'docs/s/core':>12}")
  for r in rows:
    print(f"{r['stage']:<28} {r['docs_in']:>8} {'' if r['removed'] is None else r['removed']:>8} "
          f"{'' if r['modified'] is None else r['modified']:>8} {r['cpu_s']:>8} {r['docs_per_s_per_core'] or '':>12}")
  print()
  bench_minhash.print_table(bench_minhash.run(_MINHASH_DOCS.value), _MINHASH_DOCS.value, 128)


if __name__ == "__main__":
  app.run(main)
