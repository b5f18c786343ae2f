"""Curation speed: documents per second per core for every stage, and MinHash against datasketch.

    python -m experiments.bench_curation [--max_modules 250] [--minhash_docs 3000]

Builds the offline demo crawl (`data.demo_crawl`) and runs the demo pipeline's stages one
after another in this process, each on the documents the previous ones kept, and prints
one row per stage: documents in, documents removed, documents and megabytes (characters,
HTML before extraction) per second on one core. Document stages are timed after one
warm-up document (models and detectors load lazily); dedup stages count their features,
their central decision and applying it. Then the MinHash table of `experiments.bench_minhash`: our signatures against
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
from data import report
from data import sources
from data import stages
from data.corpus import Document
from experiments import bench_minhash

_MAX_MODULES = flags.DEFINE_integer("max_modules", 250, "Standard-library modules rendered as crawl pages.")
_MINHASH_DOCS = flags.DEFINE_integer("minhash_docs", 3000, "Documents in the MinHash comparison.")


def stage_table(max_modules: int) -> list[dict]:
  """One row per stage of the demo pipeline, each stage timed alone on one core after a warm-up document."""
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
    config = curate.start(config, log=lambda line: None)
    docs = list(sources.read_documents(config.sources))
    rows = []
    for name in config.pipeline:
      stage = stages.build(name, config)
      docs_in, chars_in = len(docs), sum(report.size(d) for d in docs)
      if stages.is_global(name):
        begin = time.perf_counter()
        decisions = stage.resolve([(d.id, stage.prepare(d)) for d in docs])
        results = [stage.apply(d, decisions.get(d.id)) for d in docs]
      else:
        if docs:
          stage(docs[0])  # lazily built models and detectors load here, not in the timing
        begin = time.perf_counter()
        results = [stage(d) for d in docs]
      seconds = time.perf_counter() - begin
      docs = [r for r in results if isinstance(r, Document)]
      rows.append({"stage": name, "docs_in": docs_in, "removed": docs_in - len(docs),
                   "mb_per_s": chars_in / 1e6 / max(seconds, 1e-9), "docs_per_s": docs_in / max(seconds, 1e-9)})
  return rows


def main(argv) -> None:
  del argv
  rows = stage_table(_MAX_MODULES.value)
  print(f"{'stage':<20} {'docs in':>8} {'removed':>8} {'docs/s/core':>12} {'MB/s/core':>10}")
  for r in rows:
    print(f"{r['stage']:<20} {r['docs_in']:>8} {r['removed']:>8} {r['docs_per_s']:>12.0f} {r['mb_per_s']:>10.2f}")
  print()
  bench_minhash.print_table(bench_minhash.run(_MINHASH_DOCS.value), _MINHASH_DOCS.value, 128)


if __name__ == "__main__":
  app.run(main)
