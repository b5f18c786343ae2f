"""Token shards: exact round trip, determinism, skipped documents, refusal of bad input, the CLI, launch."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from data import corpus
from data import shards
from data import tokenizer as tokenizer_lib
from data.corpus import Document

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the tokens_dir fixture (tests/conftest.py) is written with.
VALIDATION_FRACTION, SPLIT_SEED, RECORD_TOKENS, DOCS_PER_SHARD = 0.1, 0, 256, 64


def _write(documents, tokenizer_dir, directory, **overrides):
  """shards.write of `documents` in one worker, with the fixture's settings unless overridden."""
  options = dict(validation_fraction=VALIDATION_FRACTION, split_seed=SPLIT_SEED, record_tokens=RECORD_TOKENS,
                 docs_per_shard=DOCS_PER_SHARD, num_workers=1, chunk_docs=16, log=lambda _: None)
  options.update(overrides)
  return shards.write(documents, tokenizer_dir, str(directory), **options)


def _copy(tokens_dir, tmp_path):
  """A copy of the tokens directory that a test may damage."""
  directory = str(tmp_path / "tokens")
  shutil.copytree(tokens_dir, directory)
  return directory


def _expected(documents, tokenizer, validation_fraction=VALIDATION_FRACTION):
  """(source, split) -> [(id, [BOS] + ids + [EOS])] in input order."""
  expected = {}
  for doc in documents:
    split = "validation" if corpus.in_validation(doc.id, validation_fraction, SPLIT_SEED) else "train"
    ids = [tokenizer.bos_id] + tokenizer.encode(doc.text) + [tokenizer.eos_id]
    expected.setdefault((doc.source, split), []).append((doc.id, np.asarray(ids, np.int32)))
  return expected


@pytest.fixture(scope="module")
def expected(small_documents, tokenizer):
  return _expected(small_documents, tokenizer)


@pytest.fixture(scope="module")
def other_tokenizer_dir(small_documents, tmp_path_factory):
  """A tokenizer of the same vocabulary size as `tokenizer_dir`, trained on other documents."""
  directory = str(tmp_path_factory.mktemp("other_tokenizer"))
  tokenizer_lib.train([d for d in small_documents if d.source == "code"][:60], vocab_size=512, directory=directory,
                      max_sentences=50000, seed=0)
  return directory


def _records(lengths):
  return int(sum(-(-n // RECORD_TOKENS) for n in lengths))


# --- round trip ----------------------------------------------------------------------------------------------------

def test_every_document_comes_back_exactly_in_its_source_and_split(expected, tokens, tokens_dir, tokenizer_dir):
  assert sorted(expected) == [(source, split) for source in ("code", "docs") for split in shards.SPLITS]
  assert tokens.sources == ("code", "docs")
  for (source, split), docs in expected.items():
    split_tokens = tokens.splits[source][split]
    assert split_tokens.num_documents == len(docs)
    assert split_tokens.lengths.tolist() == [len(ids) for _, ids in docs]
    for number, (doc_id, ids) in enumerate(docs):
      read = split_tokens.document(number)
      assert read.dtype == np.int32
      np.testing.assert_array_equal(read, ids, err_msg=f"{source}/{split} document {number} ({doc_id})")

  manifest = tokens.manifest
  assert manifest["tokenizer"]["sha256"] == tokenizer_lib.model_hash(tokenizer_dir)
  assert manifest["tokenizer"]["vocab_size"] == 512
  assert manifest["dtype"] == "uint16" and manifest["record_tokens"] == RECORD_TOKENS
  assert manifest["skipped"] == {"empty_documents": 0, "sources_not_kept": {}}
  with open(os.path.join(tokens.tokenizer_dir, tokenizer_lib.MODEL_FILE), "rb") as copied, \
      open(os.path.join(tokenizer_dir, tokenizer_lib.MODEL_FILE), "rb") as original:
    assert copied.read() == original.read()


def test_manifest_and_index_files_count_every_document(expected, tokens, tokens_dir):
  manifest = tokens.manifest
  assert sorted(manifest["sources"]) == ["code", "docs"]
  for (source, split), docs in expected.items():
    entry = manifest["sources"][source][split]
    assert entry["documents"] == len(docs)
    assert entry["ids"] == sum(len(ids) for _, ids in docs)
    # A new shard every DOCS_PER_SHARD documents, numbered per split.
    chunks = [docs[i:i + DOCS_PER_SHARD] for i in range(0, len(docs), DOCS_PER_SHARD)]
    assert len(chunks) >= (2 if split == "train" else 1)
    assert [s["file"] for s in entry["shards"]] == [f"{source}/{split}-{k:05d}.arrayrecord" for k in range(len(chunks))]
    assert [s["index"] for s in entry["shards"]] == [f"{source}/{split}-{k:05d}.index.tsv" for k in range(len(chunks))]
    for shard, chunk in zip(entry["shards"], chunks):
      lengths = [len(ids) for _, ids in chunk]
      assert (shard["documents"], shard["ids"], shard["records"]) == (len(chunk), sum(lengths), _records(lengths))
      path = os.path.join(tokens_dir, shard["file"])
      assert shard["bytes"] == os.path.getsize(path) and shard["sha256"] == shards.file_sha256(path)
      index = os.path.join(tokens_dir, shard["index"])
      assert shard["index_bytes"] == os.path.getsize(index) and shard["index_sha256"] == shards.file_sha256(index)
      with open(index, encoding="utf-8") as f:
        assert f.read().splitlines() == [f"{doc_id}\t{len(ids)}" for doc_id, ids in chunk]
  assert sorted(os.listdir(os.path.join(tokens_dir, "docs"))) == sorted(
      os.path.basename(s[key]) for split in shards.SPLITS for s in manifest["sources"]["docs"][split]["shards"]
      for key in ("file", "index"))


def test_long_documents_are_read_whole_and_in_part_across_records(expected, tokens):
  rng = np.random.default_rng(0)
  long_docs = [(source, split, number, ids) for (source, split), docs in expected.items()
               for number, (_, ids) in enumerate(docs) if len(ids) > 4 * RECORD_TOKENS]
  assert len(long_docs) >= 10 and {source for source, *_ in long_docs} == {"docs", "code"}
  for source, split, number, ids in long_docs[:40]:
    split_tokens = tokens.splits[source][split]
    n = len(ids)
    assert -(-n // RECORD_TOKENS) > 4  # spans several records
    ranges = [(0, n), (0, 1), (n - 1, n), (0, 256), (255, 257), (256, 512), (250, 600), (1, n - 1), (511, 1025),
              (n - 300, n)]
    ranges += [tuple(sorted(rng.choice(n + 1, 2, replace=False))) for _ in range(10)]
    for start, stop in ranges:
      part = split_tokens.read(number, int(start), int(stop))
      assert part.dtype == np.int32
      np.testing.assert_array_equal(part, ids[start:stop], err_msg=f"{source}/{split} {number} [{start}, {stop})")


def test_reads_outside_a_document_are_refused(tokens):
  """The records next to a document's belong to other documents: a range past its end is an error, not their ids."""
  split_tokens = tokens.splits["docs"]["train"]
  n = int(split_tokens.lengths[0])
  for start, stop in ((0, n + 1), (0, n + RECORD_TOKENS), (5, 5), (6, 5), (-1, 3)):
    with pytest.raises(IndexError, match=re.escape(f"ids [{start}, {stop}) of document 0 of docs/train: out of range "
                                                   f"(it has {n} ids)")):
      split_tokens.read(0, start, stop)
  with pytest.raises(IndexError, match=re.escape(f"document {split_tokens.num_documents} of docs/train: out of range")):
    split_tokens.read(split_tokens.num_documents, 0, 1)
  with pytest.raises(IndexError, match=re.escape("document -1 of docs/train: out of range")):
    split_tokens.document(-1)  # not the last document


def test_shards_are_the_same_for_one_and_two_workers(small_documents, tokenizer_dir, tokens_dir, tmp_path):
  one = _write(small_documents, tokenizer_dir, tmp_path / "one_worker", num_workers=1)  # the fixture used 2

  def files(directory):
    found = {}
    for parent, _, names in os.walk(directory):
      for name in names:
        with open(os.path.join(parent, name), "rb") as f:
          found[os.path.relpath(os.path.join(parent, name), directory)] = f.read()
    return found

  written, fixture = files(tmp_path / "one_worker"), files(tokens_dir)
  assert sorted(written) == sorted(fixture) and len(written) > 10
  different = [name for name in written if name != shards.MANIFEST and written[name] != fixture[name]]
  assert not different
  with open(os.path.join(tokens_dir, shards.MANIFEST), encoding="utf-8") as f:
    manifest = json.load(f)
  del one["seconds"], manifest["seconds"]
  assert one == manifest


def test_empty_documents_and_sources_not_kept_are_skipped_and_counted(small_documents, tokenizer_dir, tokenizer,
                                                                       tmp_path):
  docs = [Document(id=f"a{i}", source="a", text=d.text) for i, d in enumerate(small_documents[:12])]
  docs += [Document(id="a-empty-1", source="a", text=""), Document(id="b-empty", source="b", text="")]
  docs += [Document(id=f"b{i}", source="b", text=d.text) for i, d in enumerate(small_documents[150:155])]
  docs += [Document(id=f"c{i}", source="c", text=d.text) for i, d in enumerate(small_documents[20:23])]
  docs += [Document(id="c-empty", source="c", text=""), Document(id="a-empty-2", source="a", text="")]
  manifest = _write(docs, tokenizer_dir, tmp_path / "kept", keep_sources=("a", "b"))
  # A document of a source not kept is counted as such, empty or not.
  assert manifest["skipped"] == {"empty_documents": 3, "sources_not_kept": {"c": 4}}
  assert sorted(manifest["sources"]) == ["a", "b"]
  assert [sum(manifest["sources"][s][split]["documents"] for split in shards.SPLITS) for s in "ab"] == [12, 5]
  assert not os.path.exists(tmp_path / "kept" / "c")
  tokens = shards.open_tokens(str(tmp_path / "kept"))
  want = _expected([d for d in docs if d.text and d.source != "c"], tokenizer)
  for (source, split), expected_docs in want.items():
    got = tokens.splits[source][split]
    assert [got.document(i).tolist() for i in range(got.num_documents)] == [ids.tolist() for _, ids in expected_docs]
  assert shards.summary(manifest).splitlines()[-1] == "skipped: 3 empty documents; not kept: {'c': 4}"

  everything = _write(docs, tokenizer_dir, tmp_path / "all")
  assert everything["skipped"] == {"empty_documents": 4, "sources_not_kept": {}}
  assert sorted(everything["sources"]) == ["a", "b", "c"]


def test_ids_with_tabs_and_line_breaks_keep_the_index_readable(tokenizer_dir, tmp_path):
  docs = [Document(id=doc_id, source="s", text=f"text {i}")
          for i, doc_id in enumerate(["tab\there", "new\nline", "carriage\rreturn", "crlf\r\nx", "sep\u2028ok"])]
  _write(docs, tokenizer_dir, tmp_path / "ids", validation_fraction=0.0)
  tokens = shards.open_tokens(str(tmp_path / "ids"))
  assert tokens.splits["s"]["train"].num_documents == 5
  with open(tmp_path / "ids" / "s" / "train-00000.index.tsv", encoding="utf-8", newline="") as f:
    lines = f.read().split("\n")
  assert [line.rsplit("\t", 1)[0] for line in lines[:-1]] == [
      "tab here", "new line", "carriage return", "crlf  x", "sep\u2028ok"]


# --- refused input -------------------------------------------------------------------------------------------------

def test_open_refuses_a_missing_or_unfinished_directory(tokens_dir, tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(shards.ShardError, match=re.escape(f"tokens directory does not exist: {missing!r}")):
    shards.open_tokens(missing)
  unfinished = _copy(tokens_dir, tmp_path)
  os.remove(os.path.join(unfinished, shards.MANIFEST))  # what an interrupted write leaves
  with pytest.raises(shards.ShardError, match=re.escape(f"{unfinished} has no manifest.json") + ".*did not finish"):
    shards.open_tokens(unfinished)
  with open(os.path.join(unfinished, shards.MANIFEST), "w", encoding="utf-8") as f:
    f.write('{"format": 1, ')
  manifest = os.path.join(unfinished, shards.MANIFEST)
  with pytest.raises(shards.ShardError, match=re.escape(manifest) + ": not valid JSON"):
    shards.open_tokens(unfinished)


def test_open_refuses_shards_of_another_tokenizer(tokens_dir, other_tokenizer_dir, tokenizer_dir):
  assert tokenizer_lib.model_hash(other_tokenizer_dir) != tokenizer_lib.model_hash(tokenizer_dir)
  with pytest.raises(shards.ShardError) as error:
    shards.open_tokens(tokens_dir, tokenizer_dir=other_tokenizer_dir)
  message = str(error.value)
  assert f"{tokens_dir} was written with another tokenizer" in message
  assert other_tokenizer_dir in message and "re-tokenize" in message
  assert shards.open_tokens(tokens_dir, tokenizer_dir=tokenizer_dir).sources == ("code", "docs")


def test_open_refuses_a_truncated_or_missing_shard(tokens_dir, tmp_path):
  directory = _copy(tokens_dir, tmp_path)
  path = os.path.join(directory, "code", "train-00001.arrayrecord")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 1000)
  for verify in (True, False):
    with pytest.raises(shards.ShardError, match=re.escape(f"shard {path} is {size - 1000:,} bytes, the manifest "
                                                          f"records {size:,}: truncated")):
      shards.open_tokens(directory, verify_checksums=verify)
  os.remove(path)
  with pytest.raises(shards.ShardError, match=re.escape(f"shard {path} listed in the manifest is missing")):
    shards.open_tokens(directory)


def test_a_flipped_byte_is_refused_at_open_and_named_when_read_unverified(tokens_dir, tokens, tmp_path):
  directory = _copy(tokens_dir, tmp_path)
  path = os.path.join(directory, "code", "train-00000.arrayrecord")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    byte = f.read(1)[0]
    f.seek(size // 2)
    f.write(bytes([byte ^ 0xFF]))
  assert os.path.getsize(path) == size
  with pytest.raises(shards.ShardError, match=re.escape(f"shard {path} does not match its sha256 in the manifest")):
    shards.open_tokens(directory)

  unverified = shards.open_tokens(directory, verify_checksums=False).splits["code"]["train"]
  original = tokens.splits["code"]["train"]
  failed = []
  for number in range(DOCS_PER_SHARD):  # the documents of the damaged shard
    try:
      ids = unverified.document(number)
    except shards.ShardError as e:
      failed.append(number)
      message = str(e)
      assert path in message and "Riegeli" in message, message
      assert "train-00001.arrayrecord" not in message, message  # names the damaged shard only
    else:
      np.testing.assert_array_equal(ids, original.document(number))  # never silently wrong
  assert len(failed) == 1
  # Reads of the undamaged shards are unaffected.
  for number in (DOCS_PER_SHARD, original.num_documents - 1):
    np.testing.assert_array_equal(unverified.document(number), original.document(number))


def _edit_index(directory, edit):
  path = os.path.join(directory, "docs", "train-00000.index.tsv")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in edit(lines)))
  return path


def _set_lengths(directory, change):
  """Rewrites the lengths of the docs/train-00000 index with `change(lengths)`, the ids before them kept."""
  def edit(lines):
    lengths = change([int(line.rsplit("\t", 1)[1]) for line in lines])
    return [line.rsplit("\t", 1)[0] + f"\t{n}" for line, n in zip(lines, lengths)]

  return _edit_index(directory, edit)


def test_open_refuses_an_index_with_a_wrong_line_or_line_count(tokens_dir, tmp_path):
  directory = _copy(tokens_dir, tmp_path)
  manifest = shards.load_manifest(directory)
  shard = manifest["sources"]["docs"]["train"]["shards"][0]
  documents, ids = shard["documents"], shard["ids"]

  path = _edit_index(directory, lambda lines: lines[:2] + ["no tab on this line"] + lines[3:])
  with pytest.raises(shards.ShardError, match=re.escape(f"{path}:3: expected 'id<TAB>ids', got 'no tab on this line")):
    shards.open_tokens(directory)

  shutil.copy(os.path.join(tokens_dir, "docs", "train-00000.index.tsv"), path)
  lengths = []

  def drop_last(lines):
    lengths.append(int(lines[-1].rsplit("\t", 1)[1]))
    return lines[:-1]

  _edit_index(directory, drop_last)
  with pytest.raises(shards.ShardError, match=re.escape(
      f"index {path} lists {documents - 1} documents / {ids - lengths[0]} ids, the manifest records "
      f"{documents} / {ids}")):
    shards.open_tokens(directory, verify_checksums=False)

  shutil.copy(os.path.join(tokens_dir, "docs", "train-00000.index.tsv"), path)
  _edit_index(directory, lambda lines: lines + ["extra\t5"])
  with pytest.raises(shards.ShardError, match=re.escape(f"index {path} lists {documents + 1} documents")):
    shards.open_tokens(directory)

  shutil.copy(os.path.join(tokens_dir, "docs", "train-00000.index.tsv"), path)
  _set_lengths(directory, lambda lengths: [lengths[0] + 1] + lengths[1:])
  with pytest.raises(shards.ShardError, match=re.escape(f"index {path} lists {documents} documents / {ids + 1} ids")):
    shards.open_tokens(directory)


def test_open_refuses_an_index_whose_lengths_were_changed_keeping_their_sum(tokens_dir, tmp_path):
  """Same documents and ids in all: reading would silently cut documents at the wrong ids."""
  directory = _copy(tokens_dir, tmp_path)

  def move(lengths):  # some ids of the first document counted to the second, so that their records differ
    moved = next(n for n in range(1, lengths[0]) if _records([lengths[0] - n, lengths[1] + n]) != _records(lengths[:2]))
    return [lengths[0] - moved, lengths[1] + moved] + lengths[2:]

  path = _set_lengths(directory, move)
  with pytest.raises(shards.ShardError, match=re.escape(f"index {path}: its documents' lengths make ")):
    shards.open_tokens(directory, verify_checksums=False)

  shutil.copy(os.path.join(tokens_dir, "docs", "train-00000.index.tsv"), path)

  def swap(lengths):  # same records and bytes in all; only the sha256 tells
    j = next(j for j in range(1, len(lengths)) if lengths[j] != lengths[0])
    lengths[0], lengths[j] = lengths[j], lengths[0]
    return lengths

  _set_lengths(directory, swap)
  assert os.path.getsize(path) == os.path.getsize(os.path.join(tokens_dir, "docs", "train-00000.index.tsv"))
  with pytest.raises(shards.ShardError, match=re.escape(f"index {path} does not match its sha256 in the manifest")):
    shards.open_tokens(directory)


def test_write_refuses_a_finished_directory_and_replaces_an_unfinished_one(small_documents, tokenizer_dir, tmp_path):
  directory = tmp_path / "tokens"
  first = _write(small_documents[:3], tokenizer_dir, directory)
  with pytest.raises(shards.ShardError, match=re.escape(f"{directory} already holds token shards (manifest.json "
                                                        "exists)")):
    _write(small_documents[3:6], tokenizer_dir, directory)
  assert shards.load_manifest(str(directory)) == first  # untouched

  os.remove(directory / shards.MANIFEST)  # as a write interrupted before its manifest leaves it
  second = _write(small_documents[3:6], tokenizer_dir, directory)
  assert shards.open_tokens(str(directory)).manifest == second
  assert sum(second["sources"]["docs"][s]["documents"] for s in shards.SPLITS) == 3


def test_write_never_deletes_a_directory_it_did_not_write(small_documents, tokenizer_dir, tmp_path):
  for name, files in (("notes", ["notes.txt"]), ("run", ["config.json", "tokenizer/spm.model"]),
                      ("nested", ["docs/keep.txt"])):
    directory = tmp_path / name
    for file in files:
      os.makedirs(os.path.dirname(directory / file), exist_ok=True)
      (directory / file).write_text("keep me")
    with pytest.raises(shards.ShardError, match=re.escape(f"{directory} exists and is not an unfinished tokens "
                                                          "directory")):
      _write(small_documents[:3], tokenizer_dir, directory)
    assert all((directory / file).read_text() == "keep me" for file in files)
  empty = tmp_path / "empty"
  empty.mkdir()
  _write(small_documents[:3], tokenizer_dir, empty)
  assert (empty / shards.MANIFEST).exists()


@pytest.mark.parametrize("source", ["..", "tokenizer", "web/en", ""])
def test_write_refuses_a_source_name_that_is_no_directory_name(tokenizer_dir, tmp_path, source):
  directory = tmp_path / "deep" / "tokens"
  docs = [Document(id="x", source=source, text="some text")]
  with pytest.raises(shards.ShardError, match=re.escape(f"source name {source!r} cannot name a directory")):
    _write(docs, tokenizer_dir, directory, validation_fraction=0.0)
  assert sorted(os.listdir(tmp_path / "deep")) == ["tokens"]  # nothing written beside it


# --- command line --------------------------------------------------------------------------------------------------

def _cli(*overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "data.shards", "--config", "configs/tokenize/demo.py", *overrides],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def jsonl(small_documents, tmp_path_factory):
  """A JSONL corpus of two sources, web and forum, with one empty document; returns (path, documents)."""
  short = [d for d in small_documents if len(d.text) < 4000]
  docs = [Document(id=f"web-{i}", source="web", text=d.text) for i, d in enumerate(short[:24])]
  docs += [Document(id=f"forum-{i}", source="forum", text=d.text) for i, d in enumerate(short[-12:])]
  docs.insert(5, Document(id="web-empty", source="web", text=""))
  path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for doc in docs:
      f.write(json.dumps({"text": doc.text, "id": doc.id, "source": doc.source}) + "\n")
  return str(path), docs


def test_cli_writes_shards_of_two_sources_and_prints_the_summary(jsonl, tokenizer_dir, tokenizer, tmp_path):
  path, docs = jsonl
  out = str(tmp_path / "shards")
  result = _cli(f"--config.inputs=('{path}',)", f"--config.shards.output_dir={out}",
                f"--config.shards.tokenizer_dir={tokenizer_dir}", "--config.shards.num_workers=1",
                "--config.shards.validation_fraction=0.2", "--config.shards.record_tokens=128",
                "--config.shards.docs_per_shard=10")
  assert result.returncode == 0, result.stderr[-3000:]
  tokens = shards.open_tokens(out, tokenizer_dir=tokenizer_dir)
  manifest = tokens.manifest
  assert tokens.sources == ("forum", "web")
  assert manifest["inputs"] == [{"path": path, "bytes": os.path.getsize(path), "mtime": int(os.path.getmtime(path))}]
  assert manifest["skipped"] == {"empty_documents": 1, "sources_not_kept": {}}
  assert len(manifest["sources"]["web"]["train"]["shards"]) >= 2  # rotated every 10 documents

  lines = result.stdout.splitlines()
  header = lines.index(next(line for line in lines if line.startswith("source ")))
  assert lines[header].split() == ["source", "train", "docs", "train", "ids", "val", "docs", "val", "ids", "shards"]
  for row, name in zip(lines[header + 1:header + 3], ("forum", "web")):
    source = manifest["sources"][name]
    shard_count = len(source["train"]["shards"]) + len(source["validation"]["shards"])
    assert row.split() == [name, f"{source['train']['documents']:,}", f"{source['train']['ids']:,}",
                           f"{source['validation']['documents']:,}", f"{source['validation']['ids']:,}",
                           str(shard_count)]
  assert lines[header + 3] == "skipped: 1 empty documents; not kept: none"
  assert f"wrote {out}/manifest.json" in result.stdout

  expected = _expected([d for d in docs if d.text], tokenizer, validation_fraction=0.2)
  assert len(expected) == 4  # both splits of both sources
  for (source, split), expected_docs in expected.items():
    got = tokens.splits[source][split]
    assert got.num_documents == len(expected_docs)
    for number, (_, ids) in enumerate(expected_docs):
      np.testing.assert_array_equal(got.document(number), ids)


@pytest.mark.parametrize("case", ["tokenizer", "input", "sources", "output"])
def test_cli_errors_exit_2_with_one_line(jsonl, tokenizer_dir, tmp_path, case):
  path, _ = jsonl
  out = tmp_path / "shards"
  overrides = {"inputs": f"('{path}',)", "shards.output_dir": str(out), "shards.tokenizer_dir": tokenizer_dir,
               "shards.num_workers": "1"}
  if case == "tokenizer":
    overrides["shards.tokenizer_dir"] = str(tmp_path / "no_tokenizer")
    message = f"error: shards.tokenizer_dir: no tokenizer in {str(tmp_path / 'no_tokenizer')!r}"
  elif case == "input":
    overrides["inputs"] = "('/nonexistent/corpus.jsonl',)"
    message = "error: input path does not exist: '/nonexistent/corpus.jsonl'"
  elif case == "sources":
    overrides["sources"] = "('web', 'nope')"
    message = "error: sources names ['nope'], which no input document has (found: ['forum', 'web'])"
  else:
    out.mkdir()
    (out / shards.MANIFEST).write_text("{}")
    message = f"error: {out} already holds token shards (manifest.json exists)"
  result = _cli(*(f"--config.{key}={value}" for key, value in overrides.items()))
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
  assert "Traceback" not in result.stderr and "wrote" not in result.stdout
  if case == "output":
    assert sorted(os.listdir(out)) == [shards.MANIFEST] and (out / shards.MANIFEST).read_text() == "{}"
  else:
    assert not out.exists()


# --- training on shards --------------------------------------------------------------------------------------------

def test_launch_trains_on_shards_and_refuses_them_rewritten_with_another_tokenizer(
    launch, tokens_dir, small_documents, other_tokenizer_dir, tmp_path):
  assert tiny.get_config().model.vocab_size == 512 == shards.load_manifest(tokens_dir)["tokenizer"]["vocab_size"]
  tokens = _copy(tokens_dir, tmp_path)
  run_dir = tmp_path / "run"
  quick = ("--config.train.steps=2", "--config.eval.every_steps=2", "--config.checkpoint.every_steps=2")
  result = launch(run_dir, f"--config.data.tokens_dir={tokens}", *quick)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"^final: step=2 ", result.stdout, re.M), result.stdout[-2000:]
  assert f"data: {tokens}: " in result.stdout
  assert not (run_dir / "tokens").exists()  # nothing tokenized at launch
  with open(run_dir / "tokenizer" / tokenizer_lib.MODEL_FILE, "rb") as run_model, \
      open(os.path.join(tokens, shards.TOKENIZER_DIR, tokenizer_lib.MODEL_FILE), "rb") as shard_model:
    assert run_model.read() == shard_model.read()

  # Re-tokenized in place with another tokenizer of the same size: the run's tokenizer no longer matches.
  shutil.rmtree(tokens)
  _write(small_documents[:20] + small_documents[150:170], other_tokenizer_dir, tokens)
  result = launch(run_dir, f"--config.data.tokens_dir={tokens}", *quick)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert f"{tokens} was written with another tokenizer" in result.stderr
  assert str(run_dir / "tokenizer") in result.stderr
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["2"]


def test_launch_refuses_tokens_dir_together_with_data_path(launch, tokens_dir, jsonl, tmp_path):
  path, _ = jsonl
  result = launch(tmp_path / "run", f"--config.data.tokens_dir={tokens_dir}", f"--config.data.path={path}")
  assert result.returncode == 2
  assert "set data.path (documents tokenized at launch) or data.tokens_dir (token shards), not both" in result.stderr
  assert repr(path) in result.stderr and repr(tokens_dir) in result.stderr
  assert not (tmp_path / "run").exists()
