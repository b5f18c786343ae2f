"""Tokenized documents in ArrayRecord shards (grain's random-access format), with a manifest.

    python -m data.shards --config configs/tokenize/NAME.py

A tokens directory holds::

    manifest.json                    written last: present means the directory is complete
    tokenizer/                       the tokenizer the ids come from (spm.model, tokenizer.json)
    SOURCE/SPLIT-NNNNN.arrayrecord   ids of [BOS] + tokens + [EOS] per document, cut every record_tokens ids
    SOURCE/SPLIT-NNNNN.index.tsv     one line per document of the shard: id <TAB> ids stored

SPLIT is ``train`` or ``validation`` (a seeded hash of the document id, so the held-out set
of each source is fixed). A document's ids occupy consecutive records, so a reader fetches
only the records a training row needs, never a whole long document. The manifest records
the tokenizer's sha256, the input files and, per shard, documents, records, ids, bytes and
sha256 (of the shard and of its index), so that a changed tokenizer, a truncated or a
corrupted shard or index is refused by `open` before training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Iterable, Iterator

import numpy as np

from data import corpus
from data import tokenizer as tokenizer_lib
from data.corpus import Document

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "validation")
FORMAT_VERSION = 1
# One record per chunk: every record is read on its own, at random.
_WRITER_OPTIONS = "group_size:1"


class ShardError(ValueError):
  """A tokens directory that cannot be used as it is; the message names the file."""


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def ids_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


# --- writing -------------------------------------------------------------------------------------------------------

_worker_tokenizer: tokenizer_lib.Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
  global _worker_tokenizer
  _worker_tokenizer = tokenizer_lib.load(tokenizer_dir)


def _encode_chunk(texts: list[str]) -> list[list[int]]:
  return [_worker_tokenizer.encode(text) for text in texts]


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
  chunk = []
  for doc in documents:
    chunk.append(doc)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


class _SplitWriter:
  """Shards of one (source, split): rotates to a new shard every `docs_per_shard` documents."""

  def __init__(self, directory: str, source: str, split: str, docs_per_shard: int, record_tokens: int,
               dtype: np.dtype):
    self.directory, self.source, self.split = directory, source, split
    self.docs_per_shard, self.record_tokens, self.dtype = docs_per_shard, record_tokens, dtype
    self.shards: list[dict] = []
    self._writer = None
    self._index = None

  def _open(self) -> None:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    name = f"{self.split}-{len(self.shards):05d}"
    os.makedirs(os.path.join(self.directory, self.source), exist_ok=True)
    self.shards.append({"file": f"{self.source}/{name}.arrayrecord", "index": f"{self.source}/{name}.index.tsv",
                        "documents": 0, "records": 0, "ids": 0})
    self._writer = array_record_module.ArrayRecordWriter(
        os.path.join(self.directory, self.shards[-1]["file"]), _WRITER_OPTIONS)
    self._index = open(os.path.join(self.directory, self.shards[-1]["index"]), "w", encoding="utf-8", newline="\n")

  def _close(self) -> None:
    if self._writer is None:
      return
    self._writer.close()
    self._index.close()
    shard = self.shards[-1]
    path = os.path.join(self.directory, shard["file"])
    shard["bytes"] = os.path.getsize(path)
    shard["sha256"] = file_sha256(path)
    index = os.path.join(self.directory, shard["index"])
    shard["index_bytes"] = os.path.getsize(index)
    shard["index_sha256"] = file_sha256(index)
    self._writer = self._index = None

  def write(self, doc_id: str, ids: np.ndarray) -> None:
    if self._writer is None or self.shards[-1]["documents"] >= self.docs_per_shard:
      self._close()
      self._open()
    for start in range(0, len(ids), self.record_tokens):
      self._writer.write(ids[start:start + self.record_tokens].tobytes())
      self.shards[-1]["records"] += 1
    # Tabs and line breaks would break the index's lines; ids are for people and tools, not for reading back.
    safe_id = doc_id.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    self._index.write(f"{safe_id}\t{len(ids)}\n")
    self.shards[-1]["documents"] += 1
    self.shards[-1]["ids"] += len(ids)

  def finish(self) -> dict:
    self._close()
    return {"documents": sum(s["documents"] for s in self.shards), "ids": sum(s["ids"] for s in self.shards),
            "shards": self.shards}


def input_files(paths: Iterable[str]) -> list[dict]:
  """The files behind `paths` ('' = the embedded corpus), with sizes and times, for the manifest."""
  files = []
  for path in paths:
    if not path:
      files.append({"path": "<embedded corpus>", "python": sys.version.split()[0]})
      continue
    if not os.path.exists(path):
      raise FileNotFoundError(f"input path does not exist: {path!r}")
    found = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, n) for d, _, names in os.walk(path) for n in names)
    files += [{"path": f, "bytes": os.path.getsize(f), "mtime": int(os.path.getmtime(f))} for f in found]
  return files


def read_inputs(paths: Iterable[str]) -> Iterator[Document]:
  """Documents of every input path in order ('' = the embedded corpus)."""
  for path in paths:
    yield from corpus.embedded_documents() if not path else corpus.user_documents(path)


def write(documents: Iterable[Document], tokenizer_dir: str, output_dir: str, *, validation_fraction: float,
          split_seed: int, record_tokens: int, docs_per_shard: int, num_workers: int, chunk_docs: int,
          keep_sources: tuple[str, ...] = (), inputs: list[dict] | None = None,
          log=print, progress_seconds: float = 5.0) -> dict:
  """Tokenizes `documents` into `output_dir` (see module docstring); returns the manifest.

  Documents are encoded by `num_workers` processes (0 = one per core) in chunks of
  `chunk_docs`, in order, so the shards are the same for any worker count. Documents with
  empty text and documents of sources not in `keep_sources` (when given) are skipped and
  counted in the manifest.

  Raises:
    ShardError: `output_dir` already holds a complete tokens directory, or anything but an unfinished
      one; a source name is not usable as a directory name.
  """
  if os.path.exists(os.path.join(output_dir, MANIFEST)):
    raise ShardError(f"{output_dir} already holds token shards ({MANIFEST} exists); use another output_dir "
                     "or delete it")
  if os.path.exists(output_dir):
    if not _is_unfinished_write(output_dir):
      raise ShardError(f"{output_dir} exists and is not an unfinished tokens directory (it holds files that "
                       "`python -m data.shards` does not write); use another output_dir or delete it")
    shutil.rmtree(output_dir)  # an unfinished earlier run: nothing in it is trusted
  os.makedirs(output_dir)
  shutil.copytree(tokenizer_dir, os.path.join(output_dir, TOKENIZER_DIR))
  tokenizer = tokenizer_lib.load(tokenizer_dir)
  dtype = ids_dtype(tokenizer.vocab_size)
  writers: dict[tuple[str, str], _SplitWriter] = {}
  skipped = {"empty_documents": 0, "sources_not_kept": {}}
  start = last_report = time.time()
  documents_done = ids_done = 0

  def kept(docs: Iterable[Document]) -> Iterator[Document]:
    for doc in docs:
      if keep_sources and doc.source not in keep_sources:
        skipped["sources_not_kept"][doc.source] = skipped["sources_not_kept"].get(doc.source, 0) + 1
      elif not doc.text:
        skipped["empty_documents"] += 1
      else:
        yield doc

  num_workers = num_workers or os.cpu_count() or 1
  # spawn: the parent may hold JAX or other threads that a fork would copy in an undefined state.
  with multiprocessing.get_context("spawn").Pool(num_workers, _init_worker, (tokenizer_dir,)) as pool:
    chunks = _chunks(kept(documents), chunk_docs)
    pairs = ((chunk, pool.apply_async(_encode_chunk, ([d.text for d in chunk],))) for chunk in chunks)
    # Keep a bounded number of chunks in flight so memory stays flat on a corpus of any size.
    in_flight = []
    for item in pairs:
      in_flight.append(item)
      if len(in_flight) < 4 * num_workers:
        continue
      documents_done, ids_done = _drain(in_flight.pop(0), writers, tokenizer, output_dir, dtype, validation_fraction,
                                        split_seed, docs_per_shard, record_tokens, documents_done, ids_done)
      if time.time() - last_report > progress_seconds:
        last_report = time.time()
        _progress(log, documents_done, ids_done, time.time() - start)
    for item in in_flight:
      documents_done, ids_done = _drain(item, writers, tokenizer, output_dir, dtype, validation_fraction,
                                        split_seed, docs_per_shard, record_tokens, documents_done, ids_done)
  sources: dict[str, dict] = {}
  for (source, split), writer in sorted(writers.items()):
    sources.setdefault(source, {})[split] = writer.finish()
  for source in sources.values():
    for split in SPLITS:
      source.setdefault(split, {"documents": 0, "ids": 0, "shards": []})
  meta = json.loads(open(os.path.join(tokenizer_dir, tokenizer_lib.META_FILE), encoding="utf-8").read())
  manifest = {
      "format": FORMAT_VERSION,
      "tokenizer": {"sha256": tokenizer_lib.model_hash(tokenizer_dir), "vocab_size": tokenizer.vocab_size,
                    "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
                    "model_type": meta.get("model_type", "bpe"), "source_dir": os.path.abspath(tokenizer_dir)},
      "dtype": dtype.name,
      "record_tokens": record_tokens,
      "validation_fraction": validation_fraction,
      "split_seed": split_seed,
      "inputs": inputs if inputs is not None else [],
      "sources": sources,
      "skipped": skipped,
      "seconds": round(time.time() - start, 2),
  }
  # Written last, atomically: a reader never sees a manifest of shards still being written.
  tmp = os.path.join(output_dir, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, os.path.join(output_dir, MANIFEST))
  _progress(log, documents_done, ids_done, time.time() - start, final=True)
  return manifest


def _is_unfinished_write(directory: str) -> bool:
  """Whether `directory` holds nothing but what an interrupted `write` leaves (so it may be deleted)."""
  if not os.path.isdir(directory):
    return False
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if name == TOKENIZER_DIR or name == MANIFEST + ".tmp":
      continue
    if not os.path.isdir(path) or not all(
        os.path.isfile(os.path.join(path, n)) and n.endswith((".arrayrecord", ".index.tsv")) for n in os.listdir(path)):
      return False
  return True


def _check_source_name(source: str) -> None:
  """Sources become directories of the output: a name must be one plain directory name, not the tokenizer's."""
  if source in ("", ".", "..", TOKENIZER_DIR) or any(c in source for c in ("/", "\\", "\0")):
    raise ShardError(f"source name {source!r} cannot name a directory of the tokens directory; rename the source "
                     f"(not empty, '.', '..' or {TOKENIZER_DIR!r}, no '/', '\\' or NUL)")


def _drain(item, writers, tokenizer, output_dir, dtype, validation_fraction, split_seed, docs_per_shard,
           record_tokens, documents_done, ids_done):
  chunk, result = item
  for doc, tokens in zip(chunk, result.get()):
    split = "validation" if corpus.in_validation(doc.id, validation_fraction, split_seed) else "train"
    key = (doc.source, split)
    if key not in writers:
      _check_source_name(doc.source)
      writers[key] = _SplitWriter(output_dir, doc.source, split, docs_per_shard, record_tokens, dtype)
    ids = np.asarray([tokenizer.bos_id] + tokens + [tokenizer.eos_id], dtype=dtype)
    writers[key].write(doc.id, ids)
    documents_done += 1
    ids_done += len(ids)
  return documents_done, ids_done


def _progress(log, documents: int, ids: int, seconds: float, final: bool = False) -> None:
  seconds = max(seconds, 1e-9)
  log(f"{'tokenized' if final else 'tokenizing'}: {documents:,} documents, {ids:,} ids, "
      f"{documents / seconds:,.0f} documents/s, {ids / seconds:,.0f} ids/s, {seconds:.1f}s")


def summary(manifest: dict) -> str:
  """A table of documents and ids per source and split."""
  lines = [f"{'source':<16} {'train docs':>11} {'train ids':>13} {'val docs':>9} {'val ids':>11} {'shards':>7}"]
  for name, source in sorted(manifest["sources"].items()):
    train, val = source["train"], source["validation"]
    lines.append(f"{name:<16} {train['documents']:>11,} {train['ids']:>13,} {val['documents']:>9,} "
                 f"{val['ids']:>11,} {len(train['shards']) + len(val['shards']):>7}")
  skipped = manifest["skipped"]
  if skipped["empty_documents"] or skipped["sources_not_kept"]:
    lines.append(f"skipped: {skipped['empty_documents']} empty documents; "
                 f"not kept: {skipped['sources_not_kept'] or 'none'}")
  return "\n".join(lines)


# --- reading -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SplitTokens:
  """One split of one source: its documents' ids, read by (document, range) from the shards.

  Documents are numbered in shard order. Picklable (readers open lazily in each process),
  so grain's worker processes can hold it.
  """

  source: str
  split: str
  paths: tuple[str, ...]  # the .arrayrecord files, in order
  lengths: np.ndarray  # int64 [documents]: ids stored per document ([BOS] + tokens + [EOS])
  first_record: np.ndarray  # int64 [documents]: global record number of each document's first record
  record_tokens: int
  dtype: np.dtype
  shard_records: tuple[int, ...] = ()  # records per file of `paths`; names the file of a record that cannot be read
  _source: object = dataclasses.field(default=None, repr=False)

  @property
  def num_documents(self) -> int:
    return len(self.lengths)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def _records(self):
    if self._source is None:
      import grain  # pylint: disable=import-outside-toplevel
      self._source = grain.sources.ArrayRecordDataSource(list(self.paths))
    return self._source

  def read(self, document: int, start: int, stop: int) -> np.ndarray:
    """Ids [start, stop) of `document` (0 <= start < stop <= its length): int32 [stop - start].

    Raises:
      IndexError: `document` or the range is out of bounds (the records around it belong to other documents).
      ShardError: a record cannot be read (names the shard file).
    """
    if not 0 <= document < self.num_documents:
      raise IndexError(f"document {document} of {self.source}/{self.split}: out of range ({self.num_documents} "
                       "documents)")
    if not 0 <= start < stop <= self.lengths[document]:
      raise IndexError(f"ids [{start}, {stop}) of document {document} of {self.source}/{self.split}: out of range "
                       f"(it has {int(self.lengths[document])} ids)")
    first = self.first_record[document]
    lo, hi = start // self.record_tokens, (stop - 1) // self.record_tokens
    try:
      # One record at a time: __getitems__ starts a thread per record, ~15x slower for the 1-2 records a row needs.
      source = self._records()
      records = [source[int(first + r)] for r in range(lo, hi + 1)]
    except Exception as e:  # riegeli reports corruption as RuntimeError / OSError with its own text
      raise ShardError(f"cannot read document {document} of {self.source}/{self.split} from "
                       f"{', '.join(self._paths_of(int(first + lo), int(first + hi)))}: {e}") from e
    ids = np.frombuffer(b"".join(records), dtype=self.dtype)
    offset = lo * self.record_tokens
    return ids[start - offset:stop - offset].astype(np.int32)

  def _paths_of(self, first: int, last: int) -> tuple[str, ...]:
    """The files holding global records first .. last (every file when the record counts are not known)."""
    if len(self.shard_records) != len(self.paths):
      return self.paths
    ends = np.cumsum(self.shard_records)
    lo, hi = np.searchsorted(ends, [first, last], side="right")
    return self.paths[int(lo):int(hi) + 1]

  def document(self, document: int) -> np.ndarray:
    return self.read(document, 0, int(self.lengths[document]))


@dataclasses.dataclass(frozen=True)
class Tokens:
  """An opened, verified tokens directory."""

  directory: str
  manifest: dict
  splits: dict[str, dict[str, SplitTokens]]  # source -> split -> tokens

  @property
  def sources(self) -> tuple[str, ...]:
    return tuple(sorted(self.splits))

  @property
  def tokenizer_dir(self) -> str:
    return os.path.join(self.directory, TOKENIZER_DIR)


def load_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise ShardError(f"tokens directory does not exist: {directory!r}")
  if not os.path.exists(path):
    raise ShardError(f"{directory} has no {MANIFEST}: not a tokens directory, or `python -m data.shards` did not "
                     "finish writing it")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ShardError(f"{path}: not valid JSON ({e.msg})") from None
  if manifest.get("format") != FORMAT_VERSION:
    raise ShardError(f"{path}: format {manifest.get('format')!r}, this code reads format {FORMAT_VERSION}")
  return manifest


def open_tokens(directory: str, *, tokenizer_dir: str | None = None, verify_checksums: bool = True) -> Tokens:
  """Opens and checks a tokens directory written by `write`.

  Checks, before any training: the manifest is there; the tokenizer the ids come from is
  the one in `tokenizer_dir` (when given); every shard and index file exists, has the size
  and (with `verify_checksums`) the sha256 the manifest records, and holds the records
  and documents it lists.

  Raises:
    ShardError: naming the file and what is wrong with it.
  """
  manifest = load_manifest(directory)
  if tokenizer_dir is not None:
    expected = tokenizer_lib.model_hash(tokenizer_dir)
    if manifest["tokenizer"]["sha256"] != expected:
      raise ShardError(
          f"{directory} was written with another tokenizer (sha256 {manifest['tokenizer']['sha256'][:12]}...) than "
          f"{tokenizer_dir} (sha256 {expected[:12]}...); re-tokenize with `python -m data.shards` or use the "
          "matching tokenizer")
  dtype = np.dtype(manifest["dtype"])
  record_tokens = manifest["record_tokens"]
  splits: dict[str, dict[str, SplitTokens]] = {}
  for source, entry in sorted(manifest["sources"].items()):
    for split in SPLITS:
      lengths, paths = [], []
      for shard in entry[split]["shards"]:
        path = os.path.join(directory, shard["file"])
        _check_shard(path, shard, verify_checksums)
        lengths.append(_read_index(os.path.join(directory, shard["index"]), shard, record_tokens, verify_checksums))
        paths.append(path)
      lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
      records = -(-lengths // record_tokens)
      first_record = np.concatenate([[0], np.cumsum(records)[:-1]]).astype(np.int64) if len(lengths) else lengths
      splits.setdefault(source, {})[split] = SplitTokens(
          source, split, tuple(paths), lengths, first_record, record_tokens, dtype,
          tuple(shard["records"] for shard in entry[split]["shards"]))
  return Tokens(os.path.abspath(directory), manifest, splits)


def _check_shard(path: str, shard: dict, verify_checksums: bool) -> None:
  if not os.path.exists(path):
    raise ShardError(f"shard {path} listed in the manifest is missing")
  size = os.path.getsize(path)
  if size != shard["bytes"]:
    raise ShardError(f"shard {path} is {size:,} bytes, the manifest records {shard['bytes']:,}: truncated or "
                     "overwritten; re-tokenize")
  if verify_checksums and file_sha256(path) != shard["sha256"]:
    raise ShardError(f"shard {path} does not match its sha256 in the manifest: corrupted; re-tokenize "
                     "(or set data.verify_checksums=False to skip this check)")
  import grain  # pylint: disable=import-outside-toplevel
  try:
    records = len(grain.sources.ArrayRecordDataSource([path]))
  except Exception as e:  # pylint: disable=broad-except
    raise ShardError(f"shard {path} cannot be opened as ArrayRecord: {e}") from e
  if records != shard["records"]:
    raise ShardError(f"shard {path} holds {records} records, the manifest records {shard['records']}")


def _read_index(path: str, shard: dict, record_tokens: int, verify_checksums: bool) -> np.ndarray:
  if not os.path.exists(path):
    raise ShardError(f"index {path} listed in the manifest is missing")
  lengths = []
  with open(path, encoding="utf-8", newline="\n") as f:
    for line_number, line in enumerate(f, start=1):
      try:
        lengths.append(int(line.rsplit("\t", 1)[1]))
      except (IndexError, ValueError):
        raise ShardError(f"{path}:{line_number}: expected 'id<TAB>ids', got {line[:80]!r}") from None
  lengths = np.asarray(lengths, dtype=np.int64)
  if len(lengths) != shard["documents"] or int(lengths.sum()) != shard["ids"]:
    raise ShardError(f"index {path} lists {len(lengths)} documents / {int(lengths.sum())} ids, the manifest "
                     f"records {shard['documents']} / {shard['ids']}")
  records = int((-(-lengths // record_tokens)).sum())
  if records != shard["records"]:
    raise ShardError(f"index {path}: its documents' lengths make {records} records of {record_tokens} ids, the "
                     f"manifest records {shard['records']}")
  # Manifests written before the index was checksummed have no index_bytes / index_sha256.
  if "index_bytes" in shard and os.path.getsize(path) != shard["index_bytes"]:
    raise ShardError(f"index {path} is {os.path.getsize(path):,} bytes, the manifest records "
                     f"{shard['index_bytes']:,}: edited or overwritten; re-tokenize")
  if verify_checksums and "index_sha256" in shard and file_sha256(path) != shard["index_sha256"]:
    raise ShardError(f"index {path} does not match its sha256 in the manifest: corrupted; re-tokenize "
                     "(or set data.verify_checksums=False to skip this check)")
  return lengths


# --- CLI -----------------------------------------------------------------------------------------------------------

def main(argv) -> None:
  del argv
  config = _CONFIG.value
  shards = config.shards
  tokenizer_dir = shards.tokenizer_dir or config.tokenizer.output_dir
  try:
    if not tokenizer_lib.exists(tokenizer_dir):
      raise ShardError(f"shards.tokenizer_dir: no tokenizer in {tokenizer_dir!r}; train one with "
                       "`python -m data.tokenizer --config ...` first")
    for key in ("record_tokens", "docs_per_shard", "chunk_docs"):
      if shards[key] <= 0:
        raise ShardError(f"shards.{key} must be positive, got {shards[key]}")
    if not 0.0 <= shards.validation_fraction < 1.0:
      raise ShardError(f"shards.validation_fraction must be in [0, 1), got {shards.validation_fraction}")
    inputs = input_files(config.inputs)
    manifest = write(read_inputs(config.inputs), tokenizer_dir, shards.output_dir,
                     validation_fraction=shards.validation_fraction, split_seed=shards.split_seed,
                     record_tokens=shards.record_tokens, docs_per_shard=shards.docs_per_shard,
                     num_workers=shards.num_workers, chunk_docs=shards.chunk_docs,
                     keep_sources=tuple(config.sources), inputs=inputs)
    missing = sorted(set(config.sources) - set(manifest["sources"]))
    if missing:
      shutil.rmtree(shards.output_dir)
      raise ShardError(f"sources names {missing}, which no input document has (found: "
                       f"{sorted(set(manifest['sources']) | set(manifest['skipped']['sources_not_kept']))})")
  except (ShardError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(summary(manifest))
  print(f"wrote {shards.output_dir}/{MANIFEST}; train on it with --config.data.tokens_dir={shards.output_dir}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  _CONFIG = config_flags.DEFINE_config_file("config", None, "tokenize config file (configs/tokenize/NAME.py)")
  app.run(main)
