"""Tests of the curation readers (data/sources.py): every format, every read error, streaming."""

from __future__ import annotations

import datetime
import gzip
import inspect
import json
import os
import random
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fastwarc import warc

from configs.curate import base
from data import sources
from data.corpus import Document


def _read_all(spec, min_chars=1, max_chars=10_000_000):
  return list(sources.read(spec, min_chars=min_chars, max_chars=max_chars))


def _errors(items):
  return [(e.reason, e.location) for e in items if isinstance(e, sources.ReadError)]


def _docs(items):
  return [d for d in items if isinstance(d, Document)]


def _jsonl(records) -> bytes:
  return b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in records)


RECORDS = [
    {"text": "first document", "url": "https://a.example/1", "lang": "en", "score": 0.5, "tags": ["x"]},
    {"text": "second document", "id": "doc-b", "year": 2021, "flag": True, "extra": None},
    {"text": "third document", "url": "", "nested": {"k": 1}},
]


def test_jsonl_round_trip_ids_urls_and_metadata(tmp_path):
  path = tmp_path / "web.jsonl"
  # A blank line keeps its line number, so ids stay tied to lines.
  path.write_bytes(_jsonl(RECORDS[:1]) + b"\n" + _jsonl(RECORDS[1:]))
  items = _read_all(base.source("web", str(path), "jsonl"))
  assert not _errors(items)
  assert [(d.id, d.source, d.text, d.url) for d in items] == [
      ("web/web.jsonl#00000000", "web", "first document", "https://a.example/1"),
      ("web/web.jsonl#00000002", "web", "second document", None),
      ("web/web.jsonl#00000003", "web", "third document", None),
  ]
  # Scalars other than text / id / url are kept; nested values are not.
  assert items[0].metadata == {"lang": "en", "score": 0.5}
  assert items[1].metadata == {"id": "doc-b", "year": 2021, "flag": True, "extra": None}
  assert items[2].metadata == {}
  with_ids = _read_all(base.source("web", str(path), "jsonl", id_field="id", url_field=""))
  assert [d.id for d in with_ids] == ["web/web.jsonl#00000000", "web/doc-b", "web/web.jsonl#00000003"]
  assert [d.url for d in with_ids] == [None, None, None]
  assert with_ids[0].metadata == {"url": "https://a.example/1", "lang": "en", "score": 0.5}


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_of_several_members(tmp_path, suffix):
  halves = (_jsonl(RECORDS[:2]), _jsonl(RECORDS[2:]))
  if suffix == ".jsonl.gz":
    data = b"".join(gzip.compress(h) for h in halves)
  else:
    data = b"".join(zstandard.ZstdCompressor().compress(h) for h in halves)
  path = tmp_path / f"web{suffix}"
  path.write_bytes(data)
  items = _read_all(base.source("web", str(path), "jsonl"))
  assert [(d.id, d.text) for d in items] == [(f"web/web{suffix}#{i:08d}", r["text"]) for i, r in enumerate(RECORDS)]


def test_parquet_with_custom_fields(tmp_path):
  when = datetime.datetime(2024, 5, 6, 7, 8, 9)
  table = pa.table({
      "body": ["alpha text", "beta text", None],
      "doc_id": ["a1", None, "c3"],
      "link": ["https://p.example/a", "https://p.example/b", None],
      "views": [10, 20, 30],
      "crawled": [when, when, when],
      "labels": [["x"], [], ["y", "z"]],
  })
  path = tmp_path / "part-0.parquet"
  pq.write_table(table, path, row_group_size=2)
  spec = base.source("pq", str(path), "parquet", text_field="body", id_field="doc_id", url_field="link")
  items = _read_all(spec)
  docs = _docs(items)
  assert [(d.id, d.source, d.text, d.url) for d in docs] == [
      ("pq/a1", "pq", "alpha text", "https://p.example/a"),
      ("pq/part-0.parquet#00000001", "pq", "beta text", "https://p.example/b"),
  ]
  assert docs[0].metadata == {"views": 10, "crawled": "2024-05-06T07:08:09"}
  assert [(e.reason, e.location, e.detail) for e in items if isinstance(e, sources.ReadError)] == [
      ("missing_text", f"{path}:row 2", "field 'body' is absent")]


def test_unreadable_parquet_is_a_file_error(tmp_path):
  path = tmp_path / "broken.parquet"
  path.write_bytes(b"this is not parquet")
  assert _errors(_read_all(base.source("pq", str(path), "parquet"))) == [("unreadable_file", str(path))]


WEB_RECORDS = [
    {"url": "https://w.example/", "type": "request"},
    {"url": "https://w.example/", "html": "<html><body><p>Hello web</p></body></html>",
     "date": "2024-01-02T03:04:05Z"},
    {"url": "https://w.example/doc.pdf", "html": "%PDF-1.4", "content_type": "application/pdf"},
    {"url": "https://w.example/fr", "html": "<p>Crème brûlée à la française</p>",
     "content_type": "text/html; charset=iso-8859-1", "date": datetime.datetime(2023, 7, 1, 12, 0, 0)},
    {"url": "https://w.example/xhtml", "html": "<html><p>ünïcödé ✓</p></html>",
     "content_type": "application/xhtml+xml; charset=UTF-8"},
]


@pytest.mark.parametrize("name", ["crawl.warc", "crawl.warc.gz"])
def test_warc_responses_become_html_documents(tmp_path, name):
  path = str(tmp_path / name)
  offsets = sources.write_warc(path, WEB_RECORDS)
  items = _read_all(base.source("crawl", path, "warc"))
  assert _errors(items) == [("warc_not_html", f"{path}@{offsets[2]}")]
  assert [e.detail for e in items if isinstance(e, sources.ReadError)] == ["application/pdf"]
  docs = _docs(items)
  # Record numbers count every record, the request included, so ids follow file order.
  assert [(d.id, d.source, d.url, d.text, d.html) for d in docs] == [
      (f"crawl/{name}#00000001", "crawl", WEB_RECORDS[1]["url"], "", WEB_RECORDS[1]["html"]),
      (f"crawl/{name}#00000003", "crawl", WEB_RECORDS[3]["url"], "", WEB_RECORDS[3]["html"]),
      (f"crawl/{name}#00000004", "crawl", WEB_RECORDS[4]["url"], "", WEB_RECORDS[4]["html"]),
  ]
  assert docs[0].metadata["warc_date"] == "2024-01-02T03:04:05Z"
  assert docs[1].metadata["warc_date"] == "2023-07-01T12:00:00Z"
  assert docs[0].metadata["warc_record_id"].startswith("<urn:uuid:")
  assert len({d.metadata["warc_record_id"] for d in docs}) == 3


def test_write_warc_reads_back_byte_exactly_with_valid_digests(tmp_path):
  path = str(tmp_path / "crawl.warc.gz")
  offsets = sources.write_warc(path, WEB_RECORDS)
  with open(path, "rb") as f:
    records = []
    for record in warc.ArchiveIterator(f, parse_http=False):
      assert record.verify_block_digest(consume=False)
      records.append((record.stream_pos, record.record_type, record.headers.get("WARC-Target-URI"),
                      record.reader.read()))
  assert [r[0] for r in records] == offsets
  assert [r[1] for r in records] == [warc.WarcRecordType.request] + [warc.WarcRecordType.response] * 4
  assert [r[2] for r in records] == [r["url"] for r in WEB_RECORDS]
  assert records[0][3] == b"GET / HTTP/1.1\r\nHost: w.example\r\n\r\n"
  latin = records[3][3]
  assert latin.endswith(b"\r\n\r\n" + WEB_RECORDS[3]["html"].encode("iso-8859-1"))
  assert b"Content-Type: text/html; charset=iso-8859-1\r\n" in latin
  assert records[1][3].endswith(WEB_RECORDS[1]["html"].encode("utf-8"))
  with pytest.raises(ValueError, match="record 0 .*cannot be encoded as ascii"):
    sources.write_warc(str(tmp_path / "bad.warc"), [{"url": "https://x/", "html": "é", "content_type": "text/html; "
                                                                                                      "charset=ascii"}])


def test_warc_charset_fallbacks_and_record_errors(tmp_path):
  path = str(tmp_path / "odd.warc")
  offsets = sources.write_warc(path, [
      # Labelled latin-1 but using windows-1252 quotes: read as windows-1252 (WHATWG).
      {"url": "https://o.example/q", "payload": b"<p>\x93quoted\x94</p>",
       "content_type": "text/html; charset=iso-8859-1"},
      # No charset and not UTF-8: windows-1252 fallback.
      {"url": "https://o.example/c", "payload": b"<p>caf\xe9</p>", "content_type": "text/html"},
      # 0x81 is neither UTF-8 nor windows-1252.
      {"url": "https://o.example/bad", "payload": b"<p>\x81\xff</p>", "content_type": "text/html"},
      {"url": "https://o.example/empty", "html": ""},
      {"url": "https://o.example/long", "html": "<p>" + "x" * 200 + "</p>"},
      {"url": "https://o.example/huge", "html": "y" * 1000},
      {"url": "https://o.example/ok", "html": "<p>fine</p>"},
  ])
  items = _read_all(base.source("odd", path, "warc"), min_chars=1, max_chars=100)
  assert [d.html for d in _docs(items)] == ["<p>“quoted”</p>", "<p>café</p>", "<p>fine</p>"]
  errors = [(e.reason, e.location, e.detail) for e in items if isinstance(e, sources.ReadError)]
  assert errors == [
      ("invalid_utf8", f"{path}@{offsets[2]}", "not decodable as utf-8, utf-8 or cp1252"),
      ("empty", f"{path}@{offsets[3]}", "0 < 1 characters"),
      ("too_long", f"{path}@{offsets[4]}", "207 > 100 characters"),
      ("too_long", f"{path}@{offsets[5]}", "1000 bytes, more than 100 characters"),
  ]


def test_truncated_and_malformed_warc(tmp_path):
  path = tmp_path / "cut.warc"
  offsets = sources.write_warc(str(path), [{"url": f"https://t.example/{i}", "html": f"<p>{i}</p>" * 200}
                                           for i in range(3)])
  path.write_bytes(path.read_bytes()[:offsets[2] + 500])
  items = _read_all(base.source("cut", str(path), "warc"))
  assert [d.url for d in _docs(items)] == ["https://t.example/0", "https://t.example/1"]
  assert _errors(items) == [("truncated_file", f"{path}@{offsets[2]}")]
  garbage = tmp_path / "garbage.warc"
  garbage.write_bytes(b"not a warc file\r\n\r\n")
  assert _errors(_read_all(base.source("g", str(garbage), "warc"))) == [("warc_malformed", str(garbage))]


def test_text_folder_nested_files(tmp_path):
  folder = tmp_path / "books"
  (folder / "sub" / "deep").mkdir(parents=True)
  (folder / "a.txt").write_text("alpha")
  (folder / "sub" / "b.md").write_text("# beta")
  (folder / "sub" / "deep" / "c.html").write_text("<p>gamma</p>")
  (folder / "sub" / "skip.bin").write_text("not text")
  (folder / ".hidden.txt").write_text("hidden")
  (folder / "bad.txt").write_bytes(b"ok \xff\xfe not utf-8")
  spec = base.source("books", str(folder), "text")
  assert [rel for _, rel in sources.list_files(spec)] == ["a.txt", "bad.txt", "sub/b.md", "sub/deep/c.html"]
  items = _read_all(spec)
  assert _errors(items) == [("invalid_utf8", str(folder / "bad.txt"))]
  assert [(d.id, d.source, d.text, d.html, d.url) for d in _docs(items)] == [
      ("books/a.txt#00000000", "books", "alpha", None, None),
      ("books/sub/b.md#00000000", "books", "# beta", None, None),
      ("books/sub/deep/c.html#00000000", "books", "", "<p>gamma</p>", None),
  ]
  big = tmp_path / "big.txt"
  big.write_text("z" * 500)
  errors = [(e.reason, e.detail) for e in _read_all(base.source("b", str(big), "text"), max_chars=100)]
  assert errors == [("too_long", "500 bytes, more than 100 characters")]


def test_bad_jsonl_lines_each_yield_an_error_and_reading_continues(tmp_path):
  path = tmp_path / "bad.jsonl"
  lines = [
      json.dumps({"text": "good one"}).encode(),
      b'{"text": "caf\xe9"}',
      b'{"text": "unclosed',
      json.dumps({"body": "no text field"}).encode(),
      json.dumps({"text": 42}).encode(),
      json.dumps({"text": ""}).encode(),
      json.dumps({"text": "g" * 101}).encode(),
      b'["an", "array"]',
      json.dumps({"text": "good two"}).encode(),
  ]
  path.write_bytes(b"\n".join(lines) + b"\n")
  items = _read_all(base.source("web", str(path), "jsonl"), min_chars=1, max_chars=100)
  assert [d.id for d in _docs(items)] == ["web/bad.jsonl#00000000", "web/bad.jsonl#00000008"]
  assert [(e.reason, e.location) for e in items if isinstance(e, sources.ReadError)] == [
      ("invalid_utf8", f"{path}:2"),
      ("malformed_json", f"{path}:3"),
      ("missing_text", f"{path}:4"),
      ("missing_text", f"{path}:5"),
      ("empty", f"{path}:6"),
      ("too_long", f"{path}:7"),
      ("malformed_json", f"{path}:8"),
  ]
  details = {e.location: e.detail for e in items if isinstance(e, sources.ReadError)}
  assert details[f"{path}:4"] == "field 'text' is absent"
  assert details[f"{path}:5"] == "field 'text' is a int"
  assert details[f"{path}:7"] == "101 > 100 characters"
  assert details[f"{path}:8"] == "expected a JSON object, got list"


def _random_lines(count: int, seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  words = [f"w{rng.randrange(10**6):x}" for _ in range(5000)]
  return [{"text": " ".join(rng.choices(words, k=40))} for _ in range(count)]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_jsonl_keeps_what_was_read(tmp_path, suffix):
  records = _random_lines(4000)
  raw = _jsonl(records)
  if suffix == ".jsonl.gz":
    data = gzip.compress(raw)
  else:
    data = zstandard.ZstdCompressor().compress(raw)
  path = tmp_path / f"cut{suffix}"
  path.write_bytes(data[:len(data) // 2])
  items = _read_all(base.source("cut", str(path), "jsonl"))
  docs = _docs(items)
  assert 0 < len(docs) < len(records)
  assert [d.text for d in docs] == [r["text"] for r in records[:len(docs)]]
  assert items[-1] == sources.ReadError("truncated_file", f"{path}:{len(docs) + 1}", items[-1].detail)
  assert len(items) == len(docs) + 1


def test_reading_is_streamed_not_materialised(tmp_path):
  path = tmp_path / "large.jsonl.gz"
  raw = _jsonl(_random_lines(20_000, seed=1))
  path.write_bytes(gzip.compress(raw, compresslevel=1))
  spec = base.source("large", str(path), "jsonl")
  stream = sources.read(spec, min_chars=1, max_chars=10_000_000)
  assert inspect.isgenerator(stream)
  tracemalloc.start()
  try:
    count = sum(1 for _ in stream)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert count == 20_000
  assert len(raw) > 5_000_000
  assert peak < len(raw) / 10, f"peak {peak} bytes while reading {len(raw)} decompressed bytes"


def test_paths_globs_commas_and_sizes(tmp_path):
  for rel in ("2023/a.jsonl", "2023/b.jsonl.gz", "2024/c.jsonl", "2024/notes.txt"):
    (tmp_path / rel).parent.mkdir(exist_ok=True)
    data = _jsonl([{"text": rel}])
    (tmp_path / rel).write_bytes(gzip.compress(data) if rel.endswith(".gz") else data)
  folder = base.source("s", str(tmp_path), "jsonl")
  assert [rel for _, rel in sources.list_files(folder)] == ["2023/a.jsonl", "2023/b.jsonl.gz", "2024/c.jsonl"]
  globbed = base.source("s", str(tmp_path / "*" / "*.jsonl"), "jsonl")
  assert sources.list_files(globbed) == [(str(tmp_path / "2023/a.jsonl"), "2023/a.jsonl"),
                                         (str(tmp_path / "2024/c.jsonl"), "2024/c.jsonl")]
  several = base.source("s", f"{tmp_path / '2024' / 'c.jsonl'}, {tmp_path / '2023'}", "jsonl")
  assert [rel for _, rel in sources.list_files(several)] == ["a.jsonl", "b.jsonl.gz", "c.jsonl"]
  assert [d.text for d in sources.read_documents([several, globbed])] == [
      "2023/a.jsonl", "2023/b.jsonl.gz", "2024/c.jsonl", "2023/a.jsonl", "2024/c.jsonl"]
  assert sources.total_bytes([several]) == sum(
      os.path.getsize(tmp_path / rel) for rel in ("2023/a.jsonl", "2023/b.jsonl.gz", "2024/c.jsonl"))


def test_bad_paths_and_formats_raise_clear_errors(tmp_path):
  missing = str(tmp_path / "missing.jsonl")
  with pytest.raises(FileNotFoundError, match=r"source 'web': path .*missing\.jsonl.* does not exist"):
    sources.read(base.source("web", missing, "jsonl"), min_chars=1, max_chars=10)
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    sources.read_documents([base.source("web", missing, "jsonl")])
  with pytest.raises(FileNotFoundError, match=r"source 'web': path .*nothing-\*\.jsonl.* matches no jsonl file"):
    sources.list_files(base.source("web", str(tmp_path / "nothing-*.jsonl"), "jsonl"))
  (tmp_path / "only.txt").write_text("text")
  with pytest.raises(FileNotFoundError, match=r"matches no parquet file \(looked for \.parquet\)"):
    sources.list_files(base.source("tables", str(tmp_path), "parquet"))
  with pytest.raises(ValueError, match=r"source 'web': unknown format 'csv'.*jsonl, parquet, warc, text"):
    sources.list_files(base.source("web", str(tmp_path), "csv"))
  with pytest.raises(ValueError, match="unknown format 'csv'"):
    sources.read_file(base.source("web", str(tmp_path), "csv"), str(tmp_path / "only.txt"), "only.txt",
                      min_chars=1, max_chars=10)
  for sub in ("x", "y"):
    (tmp_path / sub).mkdir()
    (tmp_path / sub / "same.txt").write_text(sub)
  with pytest.raises(ValueError, match="same relative name 'same.txt'"):
    sources.list_files(base.source("dup", f"{tmp_path / 'x'},{tmp_path / 'y'}", "text"))


def test_unreadable_file_is_reported(tmp_path):
  spec = base.source("web", str(tmp_path), "jsonl")
  items = list(sources.read_file(spec, str(tmp_path / "gone.jsonl"), "gone.jsonl", min_chars=1, max_chars=10))
  assert _errors(items) == [("unreadable_file", str(tmp_path / "gone.jsonl"))]


def test_lone_surrogates_and_a_field_named_edits(tmp_path):
  path = tmp_path / "web.jsonl"
  path.write_text('{"text": "half an emoji \\ud83d here"}\n'
                  '{"text": "fine", "edits": 3, "title": "a \\udc00 b"}\n', encoding="utf-8")
  spec = base.source("web", str(path), "jsonl")
  first, second = sources.read(spec, min_chars=1, max_chars=1000)
  assert isinstance(first, sources.ReadError) and first.reason == "invalid_utf8" and "surrogate" in first.detail
  assert second.text == "fine"
  assert second.metadata == {"source_edits": 3, "title": "a \ufffd b"}  # "edits" is the stages' channel
  json.dumps(second.metadata, ensure_ascii=False).encode("utf-8")  # writable as UTF-8
