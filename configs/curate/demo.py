"""The curation demo: the offline crawl of `data.demo_crawl` through every stage.

    python -m data.demo_crawl --output_dir demo_crawl
    python -m data.curate --config configs/curate/demo.py

Kept documents land in curated/demo/documents, ready for
`python -m lm.launch --config configs/demo.py --config.data.path=curated/demo/documents`.
"""

import os

from configs.curate import base

INPUT = "demo_crawl"  # the folder `python -m data.demo_crawl` wrote


def get_config():
  config = base.get_config()
  config.sources = [
      base.source("crawl", os.path.join(INPUT, "crawl"), "warc"),
      base.source("docstrings", os.path.join(INPUT, "docstrings"), "jsonl"),
  ]
  config.output_dir = "curated/demo"
  reference = [base.source("reference", os.path.join(INPUT, "reference", "reference.jsonl"), "jsonl",
                           id_field="id")]
  config.quality_classifier.reference = reference
  config.quality_classifier.web = [base.source("web", os.path.join(INPUT, "web_sample", "web.jsonl"), "jsonl",
                                               id_field="id")]
  config.perplexity.reference = reference
  config.decontamination.eval_files = (os.path.join(INPUT, "eval", "quotes.jsonl"),)
  return config
