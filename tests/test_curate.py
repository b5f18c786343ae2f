"""The curation runners end to end on the offline demo crawl: report, defects removed, Beam == local."""

import json
import os
import re

import pytest

from configs.curate import base as curate_base
from configs.curate import demo as demo_config
from data import corpus
from data import curate
from data import demo_crawl


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("crawl"))
  manifest = demo_crawl.build(directory, seed=0, max_modules=24)
  return directory, manifest


def _config(crawl_dir, output_dir):
  config = demo_config.get_config()
  for spec in (list(config.sources) + list(config.quality_classifier.reference) + list(config.quality_classifier.web)
               + list(config.perplexity.reference)):
    spec.paths = spec.paths.replace(demo_config.INPUT, crawl_dir, 1)
  config.decontamination.eval_files = tuple(p.replace(demo_config.INPUT, crawl_dir, 1)
                                            for p in config.decontamination.eval_files)
  config.output_dir = output_dir
  config.num_workers = 2
  config.chunk_docs = 16
  config.docs_per_shard = 50
  return config


@pytest.fixture(scope="module")
def local_run(crawl, tmp_path_factory):
  crawl_dir, _ = crawl
  output_dir = str(tmp_path_factory.mktemp("local"))
  config = _config(crawl_dir, output_dir)
  report = curate.run(config, log=lambda line: None)
  return config, report


def test_report_accounts_for_every_document(local_run, crawl):
  config, _ = local_run
  _, manifest = crawl
  with open(os.path.join(config.output_dir, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  stages = report["stages"]
  assert list(stages) == ["read"] + list(config.pipeline)
  previous = stages["read"]["total"]["docs_kept"]
  for name in config.pipeline:  # what a stage keeps is exactly what the next one receives
    total = stages[name]["total"]
    assert total["docs_in"] == previous, name
    assert total["docs_kept"] + total["docs_removed"] == total["docs_in"], name
    previous = total["docs_kept"]
  kept = list(curate.kept_documents(config.output_dir))
  assert len(kept) == previous > 0
  assert len(os.listdir(os.path.join(config.output_dir, "documents"))) == -(-len(kept) // config.docs_per_shard)
  read_reasons = stages["read"]["total"]["reasons"]
  for reason in ("malformed_json", "invalid_utf8", "missing_text", "truncated_file", "warc_not_html"):
    assert read_reasons.get(reason, 0) >= 1, reason
  assert read_reasons["warc_not_html"] == manifest["counts"]["non_html_responses"]
  assert any(":" in loc or "@" in loc for loc in report["read_error_examples"]["malformed_json"])
  with open(os.path.join(config.output_dir, "report.txt"), encoding="utf-8") as f:
    text = f.read()
  assert "fuzzy_dedup" in text and "source crawl" in text and "source docstrings" in text
  with open(os.path.join(config.output_dir, "removed_samples.jsonl"), encoding="utf-8") as f:
    samples = [json.loads(line) for line in f]
  assert {s["stage"] for s in samples} >= {"url_filter", "language", "exact_dedup"}
  assert all(len([s for s in samples if s["stage"] == st]) <= config.samples_per_stage for st in config.pipeline)


def test_injected_defects_are_removed(local_run, crawl):
  config, report = local_run
  _, manifest = crawl
  kept = list(curate.kept_documents(config.output_dir))
  texts = [d.text for d in kept]
  urls = [d.url or "" for d in kept]
  crawl_texts = [d.text for d in kept if d.source == "crawl"]
  assert len(crawl_texts) == len(set(crawl_texts)), "exact copies survived"
  assert report.totals("exact_dedup")["docs_removed"] >= 1
  assert report.totals("url_filter")["reasons"].get("blocked_domain", 0) == 8
  assert not any(".wiki.example" in u for u in urls), "foreign-language pages survived"
  assert report.totals("language")["docs_removed"] >= manifest["counts"]["foreign_language_pages"]
  banner = demo_crawl.BANNER[:80]
  assert sum(banner in t for t in texts) <= 1, "the repeated paragraph survived in more than one document"
  assert report.totals("substring_dedup")["edits"].get("repeated_span", 0) >= 1
  assert not any(re.search(r"[\w.]+@[\w.]+\.(com|org|net)\b", t) for t in texts), "an e-mail address survived"
  assert report.totals("pii")["edits"].get("email", 0) >= 1
  assert report.totals("decontamination")["docs_removed"] >= 1
  assert not any("Privacy policy" in t or "Table of contents" in t for t in crawl_texts), "boilerplate survived"


def test_beam_runner_keeps_the_same_documents(local_run, crawl, tmp_path):
  config, local_report = local_run
  crawl_dir, _ = crawl
  from data import beam  # pylint: disable=import-outside-toplevel
  beam_config = _config(crawl_dir, str(tmp_path / "beam"))
  # the models trained by the local run, so both runners filter with the same ones
  beam_config.quality_classifier.model_path = os.path.join(config.output_dir, "models", "quality_classifier.npz")
  beam_config.perplexity.model_path = os.path.join(config.output_dir, "models", "perplexity.npz")
  beam_report = beam.run(beam_config, log=lambda line: None)
  local = {(d.id, d.text) for d in curate.kept_documents(config.output_dir)}
  via_beam = {(d.id, d.text) for d in curate.kept_documents(beam_config.output_dir)}
  assert via_beam == local
  for stage in ["read"] + list(config.pipeline):
    ours, theirs = local_report.totals(stage), beam_report.totals(stage)
    assert (theirs["docs_in"], theirs["docs_kept"], theirs["reasons"]) == (
        ours["docs_in"], ours["docs_kept"], ours["reasons"]), stage


def test_curated_output_is_training_input(local_run):
  config, _ = local_run
  docs = list(corpus.user_documents(os.path.join(config.output_dir, "documents")))
  assert len(docs) == len(list(curate.kept_documents(config.output_dir)))
  assert all(d.text for d in docs)


def test_bad_config_fails_at_start(crawl, tmp_path):
  crawl_dir, _ = crawl
  config = _config(crawl_dir, str(tmp_path / "out"))
  config.sources[0].paths = str(tmp_path / "no-such-crawl")
  with pytest.raises(FileNotFoundError, match="no-such-crawl"):
    curate.run(config, log=lambda line: None)
  config = _config(crawl_dir, str(tmp_path / "out"))
  config.pipeline = ("url_filter", "spell_check")
  with pytest.raises(curate.CurationConfigError, match="spell_check"):
    curate.run(config, log=lambda line: None)
  config = _config(crawl_dir, str(tmp_path / "out"))
  config.pipeline = ("url_filter", "html_extraction")
  config.url_filter.blocked_domains_file = str(tmp_path / "missing-list.txt")
  with pytest.raises(FileNotFoundError, match="url_filter.blocked_domains_file.*missing-list.txt"):
    curate.run(config, log=lambda line: None)


def test_plan_splits_at_global_stages():
  segments = curate.plan(["url_filter", "exact_dedup", "pii", "fuzzy_dedup"])
  assert segments == [curate.Segment(None, ("url_filter",), "exact_dedup"),
                      curate.Segment("exact_dedup", ("pii",), "fuzzy_dedup"),
                      curate.Segment("fuzzy_dedup", (), None)]


def test_a_stage_error_drops_only_that_document(crawl, tmp_path):
  crawl_dir, _ = crawl
  config = _config(crawl_dir, str(tmp_path / "out"))
  config.pipeline = ("pii",)
  runner = curate.StageRunner(config)
  stage = runner.stages["pii"]

  def flaky(doc):
    if "boom" in doc.text:
      raise RuntimeError("unexpected input")
    return stage(doc)

  runner.stages["pii"] = flaky
  report = curate.report_lib.Report()
  segment = curate.plan(config.pipeline)[0]
  kept, _ = runner.run_segment(segment, corpus.Document("s/a", "s", "boom"), None, report)
  assert kept is None
  kept, _ = runner.run_segment(segment, corpus.Document("s/b", "s", "mail me at a.b@example.com"), None, report)
  assert kept.text == "mail me at <EMAIL>" and "edits" not in kept.metadata
  totals = report.totals("pii")
  assert totals["reasons"] == {"stage_error": 1} and totals["edits"] == {"email": 1}


def test_duplicate_ids_are_read_errors_and_stage_order_is_checked(tmp_path):
  path = tmp_path / "a.jsonl"
  words = " ".join(f"word{i}" for i in range(60))
  path.write_text("".join(json.dumps({"id": k, "text": f"{words} {k} {i}"}) + "\n" for i, k in enumerate("xyx")),
                  encoding="utf-8")
  config = demo_config.get_config()
  config.sources = [curate_base.source("a", str(path), "jsonl", id_field="id")]
  config.pipeline = ("exact_dedup",)
  config.output_dir = str(tmp_path / "out")
  config.num_workers = 1
  report = curate.run(config, log=lambda line: None)
  assert report.totals("read")["reasons"] == {"duplicate_id": 1}
  kept = sorted((d.id, d.text) for d in curate.kept_documents(config.output_dir))
  assert [doc_id for doc_id, _ in kept] == ["a/x", "a/y"] and kept[0][1].endswith(" x 0")
  from data import beam  # pylint: disable=import-outside-toplevel
  config.output_dir = str(tmp_path / "beam")
  beam_report = beam.run(config, log=lambda line: None)
  assert beam_report.totals("read")["reasons"] == {"duplicate_id": 1}
  assert sorted((d.id, d.text) for d in curate.kept_documents(config.output_dir)) == kept  # the first copy, as locally
  config.sources = [curate_base.source("web", str(tmp_path), "warc")]
  with pytest.raises(curate.CurationConfigError, match="html_extraction"):
    curate.check_config(config)
  config.pipeline = ("language", "html_extraction")
  with pytest.raises(curate.CurationConfigError, match="language would see web records before html_extraction"):
    curate.check_config(config)


def test_command_line_reports_config_errors(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  for runner in ("local", "beam"):
    result = subprocess.run([sys.executable, "-m", "data.curate", "--config", "configs/curate/demo.py",
                             f"--runner={runner}", f"--config.output_dir={tmp_path}",
                             "--config.pipeline=('url_filter','typo_stage')"],
                            capture_output=True, text=True, check=False,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config error: pipeline: unknown stage 'typo_stage'" in result.stderr
