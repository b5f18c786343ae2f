"""Curation: raw documents in, clean deduplicated documents and a report out.

    python -m data.curate --config configs/curate/demo.py [--runner=local|beam] [--config.FIELD=VALUE ...]

The pipeline (`config.pipeline`) is a list of stage names from `data.stages`. Document
stages run on every core; a global stage (dedup) is a barrier: the stages before it run
over the whole corpus while its per-document features are collected, then it decides
centrally, and its decisions are applied as the documents flow into the next stages.
Between barriers documents are spilled to JSONL files in the output folder, so memory
holds the current chunks and the dedup features but not the documents: a digest per
document for exact dedup, a signature for fuzzy dedup, and for substring dedup the token
ids and offsets of the whole corpus (about 16 bytes per token, as in Lee et al. 2022).

Output, in `config.output_dir`:

* ``documents/part-NNNNN.jsonl``: kept documents, one JSON object per line
  (``id``, ``source``, ``url``, ``text``, ``metadata``), readable by training as
  ``--config.data.path=OUTPUT_DIR/documents``;
* ``report.json`` / ``report.txt`` / ``removed_samples.jsonl`` (see `data.report`);
* ``models/``: filters trained at the start of the run (quality classifier, n-gram model).

`--runner=beam` runs the same stages as an Apache Beam pipeline (`data.beam`).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import ml_collections

from data import report as report_lib
from data import sources
from data import stages as stages_lib
from data.corpus import Document

FORMATS = sources.FORMATS
_PROGRESS_SECONDS = 5.0


class CurationConfigError(ValueError):
  """An invalid curation config; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Segment:
  """Stages between two barriers: apply `before`'s decisions, run `stages`, prepare `after`'s features."""
  before: str | None
  stages: tuple[str, ...]
  after: str | None


def plan(pipeline: Iterable[str]) -> list[Segment]:
  """Splits a pipeline at its global stages."""
  segments, before, current = [], None, []
  for name in pipeline:
    if stages_lib.is_global(name):
      segments.append(Segment(before, tuple(current), name))
      before, current = name, []
    else:
      current.append(name)
  segments.append(Segment(before, tuple(current), None))
  return segments


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails with the key and the expectation before anything runs (missing inputs included)."""
  if not config.sources:
    raise CurationConfigError("sources: no inputs; add at least one configs.curate.base.source(...)")
  names = set()
  for i, spec in enumerate(config.sources):
    if spec.format not in FORMATS:
      raise CurationConfigError(f"sources[{i}].format: {spec.format!r} is not one of {', '.join(FORMATS)}")
    if not spec.name or "/" in spec.name:
      raise CurationConfigError(f"sources[{i}].name: {spec.name!r} must be non-empty and contain no '/'")
    if spec.name in names:
      raise CurationConfigError(f"sources[{i}].name: {spec.name!r} is used by two sources")
    names.add(spec.name)
  seen = set()
  for name in config.pipeline:
    if name not in stages_lib.REGISTRY:
      raise CurationConfigError(f"pipeline: unknown stage {name!r}; known: {', '.join(stages_lib.REGISTRY)}")
    if name in seen:
      raise CurationConfigError(f"pipeline: stage {name!r} appears twice")
    seen.add(name)
  for key in ("num_workers", "chunk_docs", "docs_per_shard", "min_doc_chars", "max_doc_chars"):
    if config[key] < (0 if key == "num_workers" else 1):
      raise CurationConfigError(f"{key}: {config[key]} must be {'>= 0' if key == 'num_workers' else '>= 1'}")
  if config.max_doc_chars < config.min_doc_chars:
    raise CurationConfigError(f"max_doc_chars: {config.max_doc_chars} is below min_doc_chars {config.min_doc_chars}")
  pipeline = list(config.pipeline)
  if any(spec.format == "warc" for spec in config.sources):  # web records have no text before extraction
    if "html_extraction" not in pipeline:
      raise CurationConfigError("pipeline: a warc source needs the html_extraction stage")
    early = [name for name in pipeline[:pipeline.index("html_extraction")] if name != "url_filter"]
    if early:
      raise CurationConfigError(f"pipeline: {', '.join(early)} would see web records before html_extraction; "
                                "only url_filter may come first")
  corpora = [("sources", config.sources)] + [(f"{stage}.{key}", config[stage][key]) for stage, key in _TRAINING_CORPORA
                                             if stage in pipeline]
  for key, specs in corpora:
    for i, spec in enumerate(specs):
      try:
        sources.list_files(spec)
      except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{key}[{i}]: {e}") from None


_TRAINING_CORPORA = (("quality_classifier", "reference"), ("quality_classifier", "web"), ("perplexity", "reference"),
                     ("toxicity", "toxic"), ("toxicity", "clean"))


def _model_trainer(name: str) -> Callable | None:
  """The `ensure_model` of stage `name`'s module: stages with one train or load a model at the start of a run."""
  return getattr(importlib.import_module(f"data.stages.{stages_lib.REGISTRY[name][0]}"), "ensure_model", None)


def prepare_models(config: ml_collections.ConfigDict, log: Callable[[str], None]) -> ml_collections.ConfigDict:
  """A copy of `config` where every stage that trains a model at start has one (trained now if missing)."""
  config = ml_collections.ConfigDict(config.to_dict())
  extraction = stages_lib.build("html_extraction", config)

  def read_documents(specs) -> Iterator[Document]:
    """Training documents of `specs`, web records turned into text as the pipeline would."""
    for doc in sources.read_documents(specs, min_chars=config.min_doc_chars, max_chars=config.max_doc_chars):
      doc = extraction(doc) if doc.html is not None else doc
      if isinstance(doc, Document):
        yield doc

  for name in config.pipeline:
    ensure = _model_trainer(name)
    if ensure is not None:
      default_path = os.path.join(config.output_dir, "models", f"{name}.npz")
      config[name] = ensure(config[name], read_documents, default_path, log, seed=config.seed)
  return config


def doc_to_json(doc: Document) -> dict[str, Any]:
  return {"id": doc.id, "source": doc.source, "url": doc.url, "text": doc.text, "metadata": doc.metadata,
          **({"html": doc.html} if doc.html is not None else {})}


def doc_from_json(record: dict[str, Any]) -> Document:
  return Document(id=record["id"], source=record["source"], text=record["text"], url=record.get("url"),
                  metadata=record.get("metadata") or {}, html=record.get("html"))


class StageRunner:
  """The built stages of a pipeline, applied to one document at a time with accounting."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.stages = {name: stages_lib.build(name, config) for name in config.pipeline}

  def run_segment(self, segment: Segment, doc: Document, decision: Any, report: report_lib.Report
                  ) -> tuple[Document | None, Any]:
    """(kept document or None, feature of `segment.after` or None) after the segment's stages."""
    names = ([segment.before] if segment.before else []) + list(segment.stages)
    for name in names:
      stage = self.stages[name]
      start = time.perf_counter()
      try:
        result = stage.apply(doc, decision) if name == segment.before else stage(doc)
        if not isinstance(result, (Document, stages_lib.Drop)):
          raise TypeError(f"stage returned {type(result).__name__}, expected Document or Drop")
      except Exception as e:  # pylint: disable=broad-except  # one bad document must not end a long run
        result = stages_lib.Drop("stage_error", f"{type(e).__name__}: {e}"[:300])
      report.record(name, doc, result, time.perf_counter() - start)
      if isinstance(result, stages_lib.Drop):
        return None, None
      if "edits" in result.metadata:  # counted by the report; not part of the output
        result = dataclasses.replace(result, metadata={k: v for k, v in result.metadata.items() if k != "edits"})
      doc = result
    feature = None
    if segment.after:
      start = time.perf_counter()
      try:
        feature = self.stages[segment.after].prepare(doc)
      except Exception as e:  # pylint: disable=broad-except
        report.record(segment.after, doc, stages_lib.Drop("stage_error", f"{type(e).__name__}: {e}"[:300]))
        return None, None
      report.seconds[segment.after] += time.perf_counter() - start
    return doc, feature


_WORKER: StageRunner | None = None


def _init_worker(config_dict: dict) -> None:
  global _WORKER  # pylint: disable=global-statement
  _WORKER = StageRunner(ml_collections.ConfigDict(config_dict))


def _run_chunk(segment: Segment, report_args: tuple, items: list[tuple[Document, Any]]):
  report = report_lib.Report(*report_args)
  kept, features = [], []
  for doc, decision in items:
    out, feature = _WORKER.run_segment(segment, doc, decision, report)
    if out is not None:
      kept.append(out)
      if segment.after:
        features.append((out.id, feature))
  return kept, features, report, len(items)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
  while chunk := list(itertools.islice(items, size)):
    yield chunk


class _Progress:
  """A progress line every few seconds: documents, documents/s and the ETA when the total is known."""

  def __init__(self, label: str, log: Callable[[str], None], total: Callable[[], float | None]):
    self.label, self.log, self.total = label, log, total
    self.start = self.last = time.time()
    self.done = 0

  def update(self, n: int, force: bool = False) -> None:
    self.done += n
    now = time.time()
    if not force and now - self.last < _PROGRESS_SECONDS:
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    fraction = self.total()
    eta = f", ETA {max(0.0, (now - self.start) * (1 / fraction - 1)):.0f}s" if fraction else ""
    self.log(f"{self.label}: {self.done} docs, {rate:.0f} docs/s{eta}")


def _read_all(config, report: report_lib.Report, progress_bytes: list[int]) -> Iterator[tuple[Document, None]]:
  seen = set()  # ids must be unique: dedup decisions and the output are keyed by them
  for spec in config.sources:
    for path, relname in sources.list_files(spec):
      for item in sources.read_file(spec, path, relname, min_chars=config.min_doc_chars,
                                    max_chars=config.max_doc_chars):
        if isinstance(item, Document) and item.id in seen:
          item = sources.ReadError("duplicate_id", f"{path} ({item.id})", "an earlier record has this id")
        if isinstance(item, sources.ReadError):
          report.record_error(spec.name, item)
        else:
          seen.add(item.id)
          report.record_read(item)
          yield item, None
      progress_bytes[0] += os.path.getsize(path)


def _read_spill(path: str, decisions: dict[str, Any]) -> Iterator[tuple[Document, Any]]:
  with open(path, encoding="utf-8") as f:
    for line in f:
      doc = doc_from_json(json.loads(line))
      yield doc, decisions.get(doc.id)


class ShardWriter:
  """Kept documents as documents/part-NNNNN.jsonl, `docs_per_shard` per file."""

  def __init__(self, directory: str, docs_per_shard: int):
    self.directory, self.docs_per_shard = directory, docs_per_shard
    if os.path.isdir(directory):  # stale parts of an earlier run would be read as output
      shutil.rmtree(directory)
    os.makedirs(directory)
    self.count, self.file = 0, None

  def write(self, doc: Document) -> None:
    if self.count % self.docs_per_shard == 0:
      self.close()
      self.file = open(os.path.join(self.directory, f"part-{self.count // self.docs_per_shard:05d}.jsonl"), "w",
                       encoding="utf-8")
    record = doc_to_json(doc)
    record.pop("html", None)
    self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self.count += 1

  def close(self) -> None:
    if self.file:
      self.file.close()
      self.file = None


def start(config: ml_collections.ConfigDict, log: Callable[[str], None]) -> ml_collections.ConfigDict:
  """Checks the config, builds every stage once and trains missing models; the config the run uses.

  Stages without models are built before any training so that a missing list or
  evaluation file fails at once; stale report files of an earlier run are removed.
  """
  check_config(config)
  for name in config.pipeline:
    if _model_trainer(name) is None:
      stages_lib.build(name, config)
  os.makedirs(config.output_dir, exist_ok=True)
  for name in ("report.json", "report.txt", "removed_samples.jsonl"):
    if os.path.exists(os.path.join(config.output_dir, name)):
      os.remove(os.path.join(config.output_dir, name))
  config = prepare_models(config, log)
  for name in config.pipeline:  # the others were built above
    if _model_trainer(name) is not None:
      stages_lib.build(name, config)
  return config


def run(config: ml_collections.ConfigDict, log: Callable[[str], None] = print) -> report_lib.Report:
  """Runs the pipeline locally on `config.num_workers` processes; returns the report (also written)."""
  config = start(config, log)
  segments = plan(config.pipeline)
  workers = config.num_workers or len(os.sched_getaffinity(0)) or 1
  report_args = (config.samples_per_stage, config.seed, config.error_examples)
  report = report_lib.Report(*report_args)
  read_report = report_lib.Report(*report_args)  # filled by the pool's feeder thread while `report` is merged
  spill_dir = os.path.join(config.output_dir, "spill")
  os.makedirs(spill_dir, exist_ok=True)
  writer = ShardWriter(os.path.join(config.output_dir, "documents"), config.docs_per_shard)
  total_input = max(1, sources.total_bytes(config.sources))
  log(f"curating {len(config.sources)} sources ({total_input / 1e6:.1f} MB) with {workers} workers: "
      f"{' -> '.join(config.pipeline)}")
  started = time.time()
  decisions: dict[str, Any] = {}
  previous_spill, previous_count = None, 0
  context = multiprocessing.get_context("spawn")  # fork is unsafe once native libraries have started threads
  try:
    with context.Pool(workers, initializer=_init_worker, initargs=(config.to_dict(),)) as pool:
      for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if previous_spill is None:
          progress_bytes = [0]
          items = _read_all(config, read_report, progress_bytes)
          fraction = lambda: progress_bytes[0] / total_input  # pylint: disable=cell-var-from-loop
        else:
          items = _read_spill(previous_spill, decisions)
          fraction = lambda: progress.done / max(1, previous_count)  # pylint: disable=cell-var-from-loop
        label = " + ".join(([f"apply {segment.before}"] if segment.before else []) + list(segment.stages)
                           + ([f"prepare {segment.after}"] if segment.after else [])) or "read"
        progress = _Progress(label, log, fraction)
        spill_path = os.path.join(spill_dir, f"segment-{index}.jsonl")
        features, count = [], 0
        run_chunk = functools.partial(_run_chunk, segment, report_args)
        with open(os.devnull if last else spill_path, "w", encoding="utf-8") as spill:
          for kept, chunk_features, chunk_report, chunk_in in pool.imap(run_chunk,
                                                                        _chunks(items, config.chunk_docs)):
            report.merge(chunk_report)
            features.extend(chunk_features)
            for doc in kept:
              if last:
                writer.write(doc)
              else:  # ASCII-escaped: whatever a stage produced, the spill file can hold it
                spill.write(json.dumps(doc_to_json(doc)) + "\n")
            count += len(kept)
            progress.update(chunk_in)
        progress.update(0, force=True)
        if previous_spill:
          os.remove(previous_spill)
        if segment.after:
          begin = time.time()
          decisions = stages_lib.build(segment.after, config).resolve(features)
          report.seconds[segment.after] += time.time() - begin
          log(f"{segment.after}: {len(decisions)} of {len(features)} documents changed ({time.time() - begin:.1f}s)")
        previous_spill, previous_count = spill_path, count
  finally:
    writer.close()
    shutil.rmtree(spill_dir, ignore_errors=True)
  report.merge(read_report)
  report_lib.write(report, config.output_dir, ["read"] + list(config.pipeline))
  read = report.totals("read")
  log(f"kept {writer.count} of {read['docs_in']} records in {time.time() - started:.1f}s; "
      f"report in {os.path.join(config.output_dir, 'report.txt')}")
  return report


def kept_documents(output_dir: str) -> Iterator[Document]:
  """The documents a run kept, in output order."""
  for path in sorted(glob.glob(os.path.join(output_dir, "documents", "*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      for line in f:
        yield doc_from_json(json.loads(line))


def main(argv) -> None:
  """`python -m data.curate`: flags --config (a curation config file) and --runner (local | beam)."""
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  config = flags.FLAGS.config
  try:
    if flags.FLAGS.runner == "beam":
      from data import beam  # pylint: disable=import-outside-toplevel
      beam.run(config)
    else:
      run(config)
  except (ValueError, FileNotFoundError) as e:  # config errors and unusable inputs, named by key and path
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  with open(os.path.join(config.output_dir, "report.txt"), encoding="utf-8") as f:
    print(f.read())


if __name__ == "__main__":
  from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  from data import curate as curate_module  # the importable module, so that beam.py shares its classes
  config_flags.DEFINE_config_file("config", None, "Path to a curation config (configs/curate/NAME.py).",
                                  lock_config=True)
  absl_flags.DEFINE_enum("runner", "local", ["local", "beam"], "local = processes on this machine; beam = Apache "
                         "Beam with config.beam_options.")
  absl_flags.mark_flags_as_required(["config"])
  app.run(curate_module.main)
