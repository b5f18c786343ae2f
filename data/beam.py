"""The curation pipeline on Apache Beam: the same stages, for corpora that outgrow one machine.

    python -m data.curate --config configs/curate/NAME.py --runner=beam \\
        --config.beam_options="--runner=DataflowRunner --project=... --temp_location=gs://..."

Reading, the document stages and the application of dedup decisions are `ParDo`s over
documents; each dedup stage decides with Beam's own grouping (its `beam_resolve`
transform), so Dataflow, Flink or Spark schedule the shuffle. Reports are built per
bundle and combined globally. With ``beam_options`` empty the pipeline runs on the
DirectRunner. Kept documents are written as ``documents/part-SSSSS-of-NNNNN.jsonl`` in
the output folder, the same format as the local runner.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import time
from typing import Any, Callable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
import ml_collections

from data import curate
from data import report as report_lib
from data import sources
from data import stages as stages_lib


# In-process runner: the DirectRunner would first try to fetch the Prism runner's binary from the network.
_LOCAL_OPTIONS = "--runner=FnApiRunner"


class _ReportingDoFn(beam.DoFn):
  """A DoFn that accounts in a per-bundle report, emitted on the "stats" output when the bundle ends."""

  def __init__(self, config_dict: dict):
    self.config_dict = config_dict
    self.report = None

  def start_bundle(self):
    config = ml_collections.ConfigDict(self.config_dict)
    self.report = report_lib.Report(config.samples_per_stage, config.seed, config.error_examples)

  def finish_bundle(self):
    yield pvalue.TaggedOutput("stats", window.GlobalWindows.windowed_value(self.report))


class _ReadFn(_ReportingDoFn):
  """(file number, source index, path, relative name) -> (id, (reading position, path, document)) per document."""

  def process(self, element):
    file_number, index, path, relname = element
    config = ml_collections.ConfigDict(self.config_dict)
    spec = config.sources[index]
    items = sources.read_file(spec, path, relname, min_chars=config.min_doc_chars, max_chars=config.max_doc_chars)
    for record, item in enumerate(items):
      if isinstance(item, sources.ReadError):
        self.report.record_error(spec.name, item)
      else:
        yield item.id, ((file_number, record), path, item)


class _FirstOfIdFn(_ReportingDoFn):
  """(id, copies) -> the copy read first; later ones are read errors, as in the local runner."""

  def process(self, element):
    _, copies = element
    copies = sorted(copies, key=lambda copy: copy[0])
    _, _, doc = copies[0]
    self.report.record_read(doc)
    for _, path, duplicate in copies[1:]:
      self.report.record_error(duplicate.source, sources.ReadError("duplicate_id", f"{path} ({duplicate.id})",
                                                                   "an earlier record has this id"))
    yield doc


class _SegmentFn(_ReportingDoFn):
  """(document, decision of the previous dedup stage) -> kept document, and the next dedup stage's feature."""

  def __init__(self, config_dict: dict, segment: curate.Segment):
    super().__init__(config_dict)
    self.segment = segment
    self.runner = None

  def setup(self):
    self.runner = curate.StageRunner(ml_collections.ConfigDict(self.config_dict))

  def process(self, element):
    doc, decision = element
    out, feature = self.runner.run_segment(self.segment, doc, decision, self.report)
    if out is not None:
      yield out
      if self.segment.after:
        yield pvalue.TaggedOutput("features", (out.id, feature))


def _merge_reports(reports, report_args) -> report_lib.Report:
  merged = report_lib.Report(*report_args)
  for report in reports:
    merged.merge(report)
  return merged


def _pair_with_decision(element) -> tuple[Any, Any]:
  _, grouped = element
  docs, decisions = grouped["doc"], grouped["decision"]
  return docs[0], (decisions[0] if decisions else None)


def run(config: ml_collections.ConfigDict, log: Callable[[str], None] = print) -> report_lib.Report:
  """Runs the pipeline with Beam (`config.beam_options`, DirectRunner when empty); returns the report."""
  config = curate.start(config, log)  # a bad config, list or model fails here, before the pipeline is submitted
  segments = curate.plan(config.pipeline)
  config_dict = config.to_dict()
  report_args = (config.samples_per_stage, config.seed, config.error_examples)
  files = [(i, path, relname) for i, spec in enumerate(config.sources) for path, relname in sources.list_files(spec)]
  files = [(number, *file) for number, file in enumerate(files)]
  documents_dir = os.path.join(config.output_dir, "documents")
  for path in FileSystems.match([os.path.join(documents_dir, "*")])[0].metadata_list:  # stale parts of an old run
    FileSystems.delete([path.path])
  report_path = os.path.join(config.output_dir, "beam_report.pickle")
  options = PipelineOptions(shlex.split(config.beam_options or _LOCAL_OPTIONS))
  log(f"curating {len(files)} files with Beam ({config.beam_options or _LOCAL_OPTIONS}): "
      f"{' -> '.join(config.pipeline)}")
  started = time.time()
  with beam.Pipeline(options=options) as p:
    read = (p | "files" >> beam.Create(files) | "reshuffle files" >> beam.Reshuffle()
            | "read" >> beam.ParDo(_ReadFn(config_dict)).with_outputs("stats", main="docs"))
    unique = (read.docs | "group ids" >> beam.GroupByKey()  # ids key the dedup decisions and must be unique
              | "first of each id" >> beam.ParDo(_FirstOfIdFn(config_dict)).with_outputs("stats", main="docs"))
    docs, stats, decisions = unique.docs, [read.stats, unique.stats], None
    for i, segment in enumerate(segments):
      if segment.before:
        keyed = docs | f"key {i}" >> beam.Map(lambda d: (d.id, d))
        items = ({"doc": keyed, "decision": decisions} | f"join {segment.before}" >> beam.CoGroupByKey()
                 | f"pair {i}" >> beam.Map(_pair_with_decision))
      else:
        items = docs | f"pair {i}" >> beam.Map(lambda d: (d, None))
      name = " + ".join(segment.stages) or f"segment {i}"
      out = items | name >> beam.ParDo(_SegmentFn(config_dict, segment)).with_outputs("stats", "features",
                                                                                        main="docs")
      docs = out.docs
      stats.append(out.stats)
      if segment.after:
        decisions = out.features | f"resolve {segment.after}" >> stages_lib.build(segment.after,
                                                                                   config).beam_resolve()

    def to_line(doc):
      record = curate.doc_to_json(doc)
      record.pop("html", None)
      return json.dumps(record, ensure_ascii=False)

    _ = (docs | "to json" >> beam.Map(to_line)
         | "write" >> beam.io.WriteToText(os.path.join(documents_dir, "part"), file_name_suffix=".jsonl"))

    def write_report(report):
      with FileSystems.create(report_path) as f:
        f.write(pickle.dumps(report))

    _ = (tuple(stats) | "all stats" >> beam.Flatten()
         | "combine stats" >> beam.CombineGlobally(_merge_reports, report_args=report_args)
         | "write report" >> beam.Map(write_report))
  with FileSystems.open(report_path) as f:
    report = pickle.loads(f.read())
  FileSystems.delete([report_path])
  report_lib.write(report, config.output_dir, ["read"] + list(config.pipeline))
  kept = report.totals(config.pipeline[-1])["docs_kept"] if config.pipeline else report.totals("read")["docs_kept"]
  log(f"kept {kept} of {report.totals('read')['docs_in']} records in {time.time() - started:.1f}s; "
      f"report in {os.path.join(config.output_dir, 'report.txt')}")
  return report
