"""Curation stages: one module per stage, one stage library for every runner.

A *document stage* is a class built from its own config subtree (``config.<name>``) whose
instances map one document to a result:

    stage = stages.build("gopher_quality", config)      # reads config.gopher_quality
    result = stage(doc)                                  # Document (kept, possibly edited) | Drop

* `Drop(reason, detail)` removes the document. `reason` is a short stable key that the
  report groups by (``"mean_word_length"``); `detail` is free text shown in the samples
  of removed documents (``"2.1 < 3"``).
* A stage that edits text returns a new `Document` (`dataclasses.replace`); what it
  changed, counted by kind, goes in the returned document's ``metadata["edits"]``
  (e.g. ``{"email": 2}``), which the runner moves into the report and removes.

A *global stage* (the dedup stages) needs to see every document before it can decide. It
is split in three so that the per-document parts run in parallel and only the decision is
central:

    feature = stage.prepare(doc)                         # small, picklable, per document
    decisions = stage.resolve(iter_of_(id, feature))     # {id: decision} for changed documents
    result = stage.apply(doc, decisions.get(doc.id))     # Document | Drop
    decisions = features | stage.beam_resolve()          # the same decision on Apache Beam:
                                                         # PCollection[(id, feature)] -> [(id, decision)]

`resolve` and `beam_resolve` must give identical decisions; where documents compete
(which copy of a duplicate is kept) the smaller document id wins, so the result does not
depend on the order in which a runner sees documents.

Stages are looked up by name; modules are imported on first use, so a pipeline that
does not use the language detector never loads its models.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import ml_collections

# name -> (module under data.stages, class). The order is the default pipeline order.
REGISTRY = {
    "url_filter": ("url_filter", "URLFilter"),
    "html_extraction": ("html_extraction", "HTMLExtraction"),
    "language": ("language", "LanguageFilter"),
    "gopher_quality": ("quality", "GopherQuality"),
    "gopher_repetition": ("quality", "GopherRepetition"),
    "c4": ("quality", "C4Filter"),
    "fineweb": ("quality", "FineWebFilter"),
    "quality_classifier": ("classifier", "QualityClassifierFilter"),
    "perplexity": ("perplexity", "PerplexityFilter"),
    "exact_dedup": ("exact_dedup", "ExactDedup"),
    "fuzzy_dedup": ("fuzzy_dedup", "FuzzyDedup"),
    "substring_dedup": ("substring_dedup", "SubstringDedup"),
    "pii": ("pii", "PIIRedaction"),
    "toxicity": ("toxicity", "ToxicityFilter"),
    "decontamination": ("decontamination", "Decontamination"),
}
GLOBAL_STAGES = frozenset({"exact_dedup", "fuzzy_dedup", "substring_dedup"})


@dataclasses.dataclass(frozen=True)
class Drop:
  """A removed document: `reason` is the report's grouping key, `detail` the evidence."""
  reason: str
  detail: str = ""


def stage_class(name: str) -> type:
  if name not in REGISTRY:
    raise ValueError(f"unknown curation stage {name!r}; known stages: {', '.join(REGISTRY)}")
  module, cls = REGISTRY[name]
  return getattr(importlib.import_module(f"data.stages.{module}"), cls)


def build(name: str, config: ml_collections.ConfigDict) -> Any:
  """The stage `name` built from `config[name]` (the whole curation config is passed)."""
  return stage_class(name)(config[name])


def is_global(name: str) -> bool:
  return name in GLOBAL_STAGES
