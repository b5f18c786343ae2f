"""The curation report: what every stage did to every source, in numbers and examples.

Both runners feed the same `Report`: one `record` per document per stage (and one per
read error), merged across worker processes or Beam bundles with `merge`. It is written
as ``report.json`` (all counts), ``report.txt`` (the funnel as tables) and
``removed_samples.jsonl`` (a few removed documents per stage, for inspection).

Which removed documents are kept as samples is decided by a seeded hash of the document
id (the smallest hashes win), so the samples do not depend on how documents were split
among workers.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Any

_COUNTS = ("docs_in", "chars_in", "docs_kept", "chars_out", "docs_removed", "chars_removed", "docs_modified",
           "chars_edited")
_SAMPLE_CHARS = 2000  # characters of a removed document kept in its sample


def _new_counts() -> dict[str, Any]:
  return dict.fromkeys(_COUNTS, 0) | {"reasons": collections.Counter(), "edits": collections.Counter()}


def size(doc) -> int:
  """Characters of a document as a stage sees it: its HTML before extraction, its text after."""
  return len(doc.html) if doc.html is not None else len(doc.text)


class Report:
  """Counts per stage and per source, read errors, timings and removed-document samples."""

  def __init__(self, samples_per_stage: int = 5, seed: int = 0, error_examples: int = 5):
    self.samples_per_stage = samples_per_stage
    self.seed = seed
    self.error_examples = error_examples
    self.stages: dict[str, dict[str, dict[str, Any]]] = {}  # stage -> source -> counts
    self.seconds: collections.Counter = collections.Counter()  # stage -> seconds spent in it, summed over workers
    self.samples: dict[str, list[tuple[str, dict]]] = {}  # stage -> [(hash, sample)], the smallest hashes
    self.error_locations: dict[str, list[str]] = {}  # read error reason -> first locations

  def _counts(self, stage: str, source: str) -> dict[str, Any]:
    return self.stages.setdefault(stage, {}).setdefault(source, _new_counts())

  def record(self, stage: str, doc, result, seconds: float = 0.0) -> None:
    """Account for `doc` (a Document) having gone through `stage` with `result` (Document | Drop)."""
    counts = self._counts(stage, doc.source)
    chars_in = size(doc)
    counts["docs_in"] += 1
    counts["chars_in"] += chars_in
    self.seconds[stage] += seconds
    if hasattr(result, "reason"):  # a Drop
      counts["docs_removed"] += 1
      counts["chars_removed"] += chars_in
      counts["reasons"][result.reason] += 1
      self._sample(stage, doc, result)
      return
    chars_out = size(result)
    counts["docs_kept"] += 1
    counts["chars_out"] += chars_out
    edits = result.metadata.get("edits")
    if edits or (result.text != doc.text and doc.html is None):
      counts["docs_modified"] += 1
      counts["chars_edited"] += max(0, chars_in - chars_out)
      counts["edits"].update(edits or {"text_changed": 1})

  def record_error(self, source: str, error) -> None:
    """Account for a record of `source` that could not be read (a sources.ReadError)."""
    counts = self._counts("read", source)
    counts["docs_in"] += 1
    counts["docs_removed"] += 1
    counts["reasons"][error.reason] += 1
    locations = self.error_locations.setdefault(error.reason, [])
    if len(locations) < self.error_examples:
      locations.append(f"{error.location}" + (f" ({error.detail})" if error.detail else ""))

  def record_read(self, doc) -> None:
    """Account for a document read successfully."""
    counts = self._counts("read", doc.source)
    counts["docs_in"] += 1
    counts["docs_kept"] += 1
    counts["chars_in"] += size(doc)
    counts["chars_out"] += size(doc)

  def _sample(self, stage: str, doc, drop) -> None:
    if self.samples_per_stage <= 0:
      return
    key = hashlib.blake2b(f"{self.seed}:{stage}:{doc.id}".encode(), digest_size=8).hexdigest()
    samples = self.samples.setdefault(stage, [])
    text = doc.text if doc.text or doc.html is None else doc.html
    samples.append((key, {"stage": stage, "reason": drop.reason, "detail": drop.detail, "id": doc.id,
                          "source": doc.source, "url": doc.url, "text": text[:_SAMPLE_CHARS]}))
    samples.sort(key=lambda item: item[0])
    del samples[self.samples_per_stage:]

  def merge(self, other: "Report") -> "Report":
    """Adds `other`'s counts into this report (in place) and returns it."""
    for stage, sources in other.stages.items():
      for source, theirs in sources.items():
        ours = self._counts(stage, source)
        for key in _COUNTS:
          ours[key] += theirs[key]
        ours["reasons"].update(theirs["reasons"])
        ours["edits"].update(theirs["edits"])
    self.seconds.update(other.seconds)
    for stage, samples in other.samples.items():
      merged = sorted({key: sample for key, sample in self.samples.get(stage, []) + samples}.items())
      self.samples[stage] = merged[:self.samples_per_stage]
    for reason, locations in other.error_locations.items():  # first in path order, whatever the merge order
      merged = sorted(set(self.error_locations.get(reason, [])) | set(locations))
      self.error_locations[reason] = merged[:self.error_examples]
    return self

  def totals(self, stage: str) -> dict[str, Any]:
    """Counts of `stage` summed over sources."""
    total = _new_counts()
    for counts in self.stages.get(stage, {}).values():
      for key in _COUNTS:
        total[key] += counts[key]
      total["reasons"].update(counts["reasons"])
      total["edits"].update(counts["edits"])
    return total

  def to_json(self, stage_order: list[str] | None = None) -> dict[str, Any]:
    """Everything as plain JSON: per stage, totals and per-source counts with top reasons."""
    stage_order = stage_order or []
    order = list(stage_order) + [s for s in self.stages if s not in stage_order]

    def plain(counts):
      return {k: counts[k] for k in _COUNTS} | {"reasons": dict(counts["reasons"].most_common()),
                                                 "edits": dict(counts["edits"].most_common())}

    stages = {}
    for stage in order:
      total = self.totals(stage)
      stages[stage] = {
          "total": plain(total),
          "removed_fraction": total["docs_removed"] / max(1, total["docs_in"]),
          "cpu_seconds": round(self.seconds.get(stage, 0.0), 3),
          "docs_per_cpu_second": round(total["docs_in"] / self.seconds[stage], 1) if self.seconds.get(stage) else None,
          "sources": {source: plain(counts) for source, counts in sorted(self.stages.get(stage, {}).items())},
      }
    return {"stages": stages, "read_error_examples": self.error_locations}

  def sample_records(self) -> list[dict]:
    return [sample for stage in self.samples for _, sample in self.samples[stage]]

  def summary(self, stage_order: list[str] | None = None) -> str:
    """The funnel as text: one row per stage (all sources), then one table per source."""
    data = self.to_json(stage_order)
    stages = list(data["stages"])
    lines = ["Curation report", "", _table(stages, {s: data["stages"][s]["total"] for s in stages}, data)]
    sources = sorted({src for s in stages for src in data["stages"][s]["sources"]})
    for source in sources:
      rows = {s: data["stages"][s]["sources"][source] for s in stages if source in data["stages"][s]["sources"]}
      lines += ["", f"source {source}", _table(list(rows), rows, None)]
    if data["read_error_examples"]:
      lines += ["", "read errors (first locations)"]
      for reason, locations in sorted(data["read_error_examples"].items()):
        lines += [f"  {reason}: " + "; ".join(locations)]
    return "\n".join(lines)


def _table(stages: list[str], rows: dict[str, dict], data: dict | None) -> str:
  header = (f"{'stage':<18} {'docs in':>9} {'kept':>9} {'removed':>8} {'modified':>8} {'chars in':>12} "
            f"{'chars out':>12} {'docs/s/core':>11}  top reasons")
  out = [header, "-" * len(header)]
  for stage in stages:
    c = rows[stage]
    removed = f"{100 * c['docs_removed'] / max(1, c['docs_in']):.1f}%"
    reasons = ", ".join(f"{r} {n}" for r, n in list(c["reasons"].items())[:3])
    if c["edits"]:
      reasons += ("; " if reasons else "") + "edits: " + ", ".join(f"{k} {n}" for k, n in list(c["edits"].items())[:5])
    speed = data["stages"][stage]["docs_per_cpu_second"] if data else None
    out.append(f"{stage:<18} {c['docs_in']:>9} {c['docs_kept']:>9} {removed:>8} {c['docs_modified']:>8} "
               f"{c['chars_in']:>12} {c['chars_out']:>12} {speed if speed is not None else '':>11}  {reasons}")
  return "\n".join(out)


def write(report: Report, output_dir: str, stage_order: list[str]) -> None:
  """report.json, report.txt and removed_samples.jsonl in `output_dir`."""
  with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report.to_json(stage_order), f, indent=1)
  with open(os.path.join(output_dir, "report.txt"), "w", encoding="utf-8") as f:
    f.write(report.summary(stage_order) + "\n")
  with open(os.path.join(output_dir, "removed_samples.jsonl"), "w", encoding="utf-8") as f:
    for sample in report.sample_records():
      f.write(json.dumps(sample, ensure_ascii=False) + "\n")
