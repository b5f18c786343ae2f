"""Readers of the curation pipeline's inputs: JSONL (plain, gzip, zstd), Parquet, WARC and text folders.

A source is one `configs.curate.base.source(...)` ConfigDict (name, paths, format, text_field,
id_field, url_field). `list_files` expands its paths into files; `read_file` streams one file
and yields a `Document` per record, or a `ReadError` for a record (or the rest of a file)
that could not be read, so one bad line never stops a run and the report can name the
file and line / byte offset of every kind of failure.

Every reader streams: JSONL is decompressed in fixed-size chunks and split into lines,
Parquet is read in record batches, WARC record by record, so memory does not grow with
file size (only with the largest single record).

Formats and the rules taken from their specifications:

* WARC/1.1 (ISO 28500:2017): only ``response`` records become documents; their HTTP
  payload is decoded from the charset of the HTTP ``Content-Type`` header, then UTF-8,
  then windows-1252. A declared ``iso-8859-1`` / ``us-ascii`` is read as windows-1252,
  as the WHATWG Encoding Standard prescribes for these labels (pages so labelled use
  the 0x80-0x9F range for curly quotes and dashes). The raw HTML goes in
  `Document.html` with empty `text`, for the extraction stage to fill.
* Length limits (`min_chars`, `max_chars`, the config's ``min_doc_chars`` /
  ``max_doc_chars``): a payload of more than 4 * max_chars bytes holds more than
  max_chars characters in every encoding (UTF-8, RFC 3629, and UTF-32 use at most 4
  bytes per character), so such text files and WARC records are rejected before they
  are read into memory.

Document ids are ``{source}/{relative file name}#{record index:08d}`` (so default ids sort
in reading order) or ``{source}/{value}`` when the source names an `id_field` that the
record has.
"""

from __future__ import annotations

import base64
import codecs
import dataclasses
import datetime
import glob
import gzip
import hashlib
import json
import os
import re
import urllib.parse
import uuid
import zlib
from typing import Any, Iterable, Iterator

import ml_collections
import zstandard

from data.corpus import Document

FORMATS = ("jsonl", "parquet", "warc", "text")
# File name endings a folder or folder-matching glob contributes, per format.
EXTENSIONS = {
    "text": (".txt", ".md", ".rst", ".py", ".html", ".htm"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson", ".ndjson.gz", ".ndjson.zst"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz"),
}
_HTML_SUFFIXES = (".html", ".htm")
_HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")
_CHUNK_BYTES = 1 << 16
_PARQUET_BATCH_ROWS = 1024
_MAX_BYTES_PER_CHAR = 4
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GLOB_MAGIC = re.compile(r"[*?[]")
# WHATWG Encoding Standard: these labels mean windows-1252 on the web.
_WINDOWS_1252_LABELS = frozenset({"iso8859-1", "ascii"})
_DEFAULT_WARC_DATE = "1970-01-01T00:00:00Z"


@dataclasses.dataclass(frozen=True)
class ReadError:
  """A record or file that could not be read.

  Attributes:
    reason: stable key the report groups by: invalid_utf8, malformed_json, missing_text,
      truncated_file, warc_not_html, warc_malformed, unreadable_file, empty, too_long.
    location: "PATH:LINE" (JSONL, 1-based), "PATH:row N" (Parquet), "PATH@OFFSET" (WARC
      record byte offset) or "PATH" (a whole file).
    detail: short human-readable evidence.
  """
  reason: str
  location: str
  detail: str = ""


class _TruncatedStream(Exception):
  """A compressed stream ended inside a compressed member."""


def _check_format(spec: ml_collections.ConfigDict) -> str:
  if spec.format not in FORMATS:
    raise ValueError(f"source {spec.name!r}: unknown format {spec.format!r} (config key format); "
                     f"expected one of {', '.join(FORMATS)}")
  return spec.format


def _has_magic(path: str) -> bool:
  return _GLOB_MAGIC.search(path) is not None


def _glob_root(pattern: str) -> str:
  """The directory formed by the leading path components of `pattern` that hold no wildcard."""
  fixed = []
  for part in pattern.split(os.sep):
    if _has_magic(part):
      break
    fixed.append(part)
  return os.sep.join(fixed) or (os.sep if pattern.startswith(os.sep) else ".")


def _walk(folder: str, extensions: tuple[str, ...], root: str) -> list[tuple[str, str]]:
  """(path, path relative to `root`) of the files under `folder` with one of `extensions`; hidden entries skipped."""
  found = []
  for directory, subdirs, names in os.walk(folder):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    for name in sorted(names):
      if not name.startswith(".") and name.endswith(extensions):
        path = os.path.join(directory, name)
        found.append((path, os.path.relpath(path, root)))
  return found


def list_files(spec: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """The files of a source as (path, relative name) pairs, sorted by path.

  Args:
    spec: a `source(...)` ConfigDict. `spec.paths` is a file, a folder (searched
      recursively for the format's `EXTENSIONS`), a glob (``**`` recurses; matched files
      are taken whatever their extension, matched folders are searched), or several of
      these separated by commas.

  Returns:
    (path, relative name): the name is relative to the folder or to the glob's leading
    wildcard-free directory, or the file's base name for a single file. It is the file's
    part of every document id, so two different files with one relative name are an error.

  Raises:
    ValueError: unknown format, empty `paths`, or two files with the same relative name.
    FileNotFoundError: an entry of `paths` matches no file.
  """
  extensions = EXTENSIONS[_check_format(spec)]
  entries = [entry.strip() for entry in str(spec.paths).split(",") if entry.strip()]
  if not entries:
    raise ValueError(f"source {spec.name!r}: paths is empty; expected a file, folder or glob")
  by_path = {}
  for entry in entries:
    pattern = os.path.expanduser(entry)
    if _has_magic(pattern):
      root = _glob_root(pattern)
      found = []
      for match in sorted(glob.glob(pattern, recursive=True)):
        if os.path.isdir(match):
          found += _walk(match, extensions, root)
        elif os.path.isfile(match):
          found.append((match, os.path.relpath(match, root)))
    elif os.path.isdir(pattern):
      found = _walk(pattern, extensions, pattern)
    elif os.path.isfile(pattern):
      found = [(pattern, os.path.basename(pattern))]
    else:
      raise FileNotFoundError(f"source {spec.name!r}: path {entry!r} does not exist")
    if not found:
      raise FileNotFoundError(f"source {spec.name!r}: path {entry!r} matches no {spec.format} file "
                              f"(looked for {', '.join(extensions)})")
    for path, relname in found:
      by_path.setdefault(os.path.abspath(path), (path, relname.replace(os.sep, "/")))
  owner = {}
  for path, relname in by_path.values():
    if relname in owner:
      raise ValueError(f"source {spec.name!r}: files {owner[relname]!r} and {path!r} have the same relative name "
                       f"{relname!r}, so their document ids would collide; give them separate sources")
    owner[relname] = path
  return sorted(by_path.values())


def _length_error(length: int, location: str, min_chars: int, max_chars: int) -> ReadError | None:
  if length < min_chars:
    return ReadError("empty", location, f"{length} < {min_chars} characters")
  if length > max_chars:
    return ReadError("too_long", location, f"{length} > {max_chars} characters")
  return None


def _scalar(value: Any) -> Any:
  """`value` if it is a JSON scalar, its ISO form if it is a date / time, else None (not kept)."""
  if value is None or isinstance(value, (str, int, float, bool)):
    return value
  if isinstance(value, (datetime.date, datetime.time)):
    return value.isoformat()
  return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _record_document(spec: ml_collections.ConfigDict, record: dict, relname: str, index: int, location: str,
                     min_chars: int, max_chars: int) -> Document | ReadError:
  """The document of one JSONL / Parquet record (a dict of field -> value)."""
  text = record.get(spec.text_field)
  if isinstance(text, bytes):
    try:
      text = text.decode("utf-8")
    except UnicodeDecodeError as e:
      return ReadError("invalid_utf8", location, f"field {spec.text_field!r}, byte {e.start}: {e.reason}")
  if not isinstance(text, str):
    found = "absent" if text is None else f"a {type(text).__name__}"
    return ReadError("missing_text", location, f"field {spec.text_field!r} is {found}")
  error = _length_error(len(text), location, min_chars, max_chars)
  if error:
    return error
  surrogate = _SURROGATE.search(text)
  if surrogate:  # JSON escapes can encode half of a surrogate pair, which no UTF-8 file can hold
    return ReadError("invalid_utf8", location, f"field {spec.text_field!r}, character {surrogate.start()}: "
                     "lone surrogate")
  record_id = record.get(spec.id_field) if spec.id_field else None
  if record_id is None or record_id == "":
    doc_id = f"{spec.name}/{relname}#{index:08d}"
  else:
    doc_id = f"{spec.name}/{record_id}"
  url = record.get(spec.url_field) if spec.url_field else None
  own_fields = {spec.text_field, spec.id_field, spec.url_field}
  metadata = {}
  for key, value in record.items():
    kept = _scalar(value)
    # None is itself a JSON scalar; a None from `_scalar` otherwise marks a nested value, left out.
    if isinstance(kept, str):
      kept = _SURROGATE.sub("\ufffd", kept)
    if key not in own_fields and (kept is not None or value is None):
      # "edits" is where stages report their changes to the runner; a source field of that name is renamed.
      metadata["source_edits" if key == "edits" else key] = kept
  if isinstance(url, str):
    url = _SURROGATE.sub("\ufffd", url)
  return Document(id=doc_id, source=spec.name, text=text, url=url if isinstance(url, str) and url else None,
                  metadata=metadata)


def _zstd_chunks(file) -> Iterator[bytes]:
  """Decompressed chunks of a zstd stream of one or more frames; raises _TruncatedStream if a frame is cut short."""
  decompressor = zstandard.ZstdDecompressor()
  frame = decompressor.decompressobj()
  in_frame = False
  while chunk := file.read(_CHUNK_BYTES):
    while chunk:
      in_frame = True
      out = frame.decompress(chunk)
      if out:
        yield out
      if frame.eof:
        # Concatenated frames: what follows the end of one frame starts the next.
        chunk, frame, in_frame = frame.unused_data, decompressor.decompressobj(), False
      else:
        chunk = b""
  if in_frame:
    raise _TruncatedStream("zstd stream ends inside a frame")


def _chunks(file) -> Iterator[bytes]:
  """Decompressed chunks of `file` (binary), gzip or zstd detected by magic number, else raw."""
  magic = file.read(len(_ZSTD_MAGIC))
  file.seek(0)
  if magic.startswith(_GZIP_MAGIC):
    with gzip.GzipFile(fileobj=file) as stream:
      while True:
        try:
          chunk = stream.read(_CHUNK_BYTES)
        except EOFError as e:
          raise _TruncatedStream(f"gzip stream ends inside a member ({e})") from None
        if not chunk:
          return
        yield chunk
  elif magic == _ZSTD_MAGIC:
    yield from _zstd_chunks(file)
  else:
    while chunk := file.read(_CHUNK_BYTES):
      yield chunk


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
  """The b"\\n"-separated lines of a stream of chunks, without the separator."""
  pending = []
  for chunk in chunks:
    start = 0
    while (end := chunk.find(b"\n", start)) >= 0:
      if pending:
        pending.append(chunk[start:end])
        yield b"".join(pending)
        pending = []
      else:
        yield chunk[start:end]
      start = end + 1
    if start < len(chunk):
      pending.append(chunk[start:])
  if pending:
    yield b"".join(pending)


def _read_jsonl(spec, path, relname, min_chars, max_chars) -> Iterator[Document | ReadError]:
  try:
    file = open(path, "rb")  # pylint: disable=consider-using-with
  except OSError as e:
    yield ReadError("unreadable_file", path, e.strerror or str(e))
    return
  with file:
    line_number = 0
    try:
      for line_number, raw in enumerate(_lines(_chunks(file)), start=1):
        if not raw.strip():
          continue
        location = f"{path}:{line_number}"
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          yield ReadError("invalid_utf8", location, f"byte {e.start}: {e.reason}")
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          yield ReadError("malformed_json", location, f"{e.msg} at column {e.colno}")
          continue
        if not isinstance(record, dict):
          yield ReadError("malformed_json", location, f"expected a JSON object, got {type(record).__name__}")
          continue
        yield _record_document(spec, record, relname, line_number - 1, location, min_chars, max_chars)
    except _TruncatedStream as e:
      yield ReadError("truncated_file", f"{path}:{line_number + 1}", str(e))
    except (OSError, zlib.error, zstandard.ZstdError) as e:
      yield ReadError("unreadable_file", f"{path}:{line_number + 1}", str(e))


def _read_parquet(spec, path, relname, min_chars, max_chars) -> Iterator[Document | ReadError]:
  import pyarrow  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # pylint: disable=import-outside-toplevel

  try:
    parquet = pyarrow.parquet.ParquetFile(path)
  except (OSError, pyarrow.ArrowException) as e:
    yield ReadError("unreadable_file", path, str(e))
    return
  with parquet:
    # Nested columns never reach the document (metadata keeps scalars), so they are not read.
    columns = [field.name for field in parquet.schema_arrow
               if field.name == spec.text_field or not pyarrow.types.is_nested(field.type)]
    row = 0
    try:
      for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
          yield _record_document(spec, record, relname, row, f"{path}:row {row}", min_chars, max_chars)
          row += 1
    except (OSError, pyarrow.ArrowException) as e:
      yield ReadError("unreadable_file", f"{path}:row {row}", str(e))


def _decode_html(payload: bytes, declared: str | None) -> str | None:
  """`payload` decoded with the declared charset, else UTF-8, else windows-1252; None if none decodes strictly."""
  candidates = []
  if declared:
    try:
      name = codecs.lookup(declared).name
    except LookupError:
      name = None
    if name in _WINDOWS_1252_LABELS:
      candidates.append("cp1252")
    if name:
      candidates.append(name)
  candidates += ["utf-8", "cp1252"]
  for encoding in dict.fromkeys(candidates):
    try:
      return payload.decode(encoding)
    except UnicodeDecodeError:
      continue
  return None


def _read_warc(spec, path, relname, min_chars, max_chars) -> Iterator[Document | ReadError]:
  from fastwarc import warc  # pylint: disable=import-outside-toplevel

  try:
    file = open(path, "rb")  # pylint: disable=consider-using-with
  except OSError as e:
    yield ReadError("unreadable_file", path, e.strerror or str(e))
    return
  with file:
    records = warc.ArchiveIterator(file, record_types=warc.WarcRecordType.any_type, parse_http=True,
                                   auto_decode="all")
    index, offset = -1, None
    try:
      for index, record in enumerate(records):
        offset = record.stream_pos
        if record.record_type != warc.WarcRecordType.response:
          continue
        location = f"{path}@{offset}"
        if not record.is_http or record.http_headers is None:
          yield ReadError("warc_malformed", location, "response record without HTTP headers")
          continue
        content_type = (record.http_content_type or "").lower()
        if content_type not in _HTML_CONTENT_TYPES:
          yield ReadError("warc_not_html", location, content_type or "no Content-Type")
          continue
        http = record.http_headers
        # With a content or transfer encoding the stored length is not the payload's length.
        plain_length = http.get("Content-Encoding") is None and http.get("Transfer-Encoding") is None
        if plain_length and record.content_length > _MAX_BYTES_PER_CHAR * max_chars:
          yield ReadError("too_long", location, f"{record.content_length} bytes, more than {max_chars} characters")
          continue
        try:
          payload = record.reader.read()
        except OSError as e:
          yield ReadError("warc_malformed", location, f"payload cannot be decoded: {e}")
          continue
        if plain_length and len(payload) < record.content_length:
          yield ReadError("truncated_file", location, f"record payload ends after {len(payload)} of "
                          f"{record.content_length} bytes")
          return
        html = _decode_html(payload, record.http_charset)
        if html is None:
          yield ReadError("invalid_utf8", location, f"not decodable as {record.http_charset or 'utf-8'}, "
                          "utf-8 or cp1252")
          continue
        error = _length_error(len(html), location, min_chars, max_chars)
        if error:
          yield error
          continue
        yield Document(id=f"{spec.name}/{relname}#{index:08d}", source=spec.name, text="",
                       url=record.headers.get("WARC-Target-URI") or None,
                       metadata={"warc_date": record.headers.get("WARC-Date"), "warc_record_id": record.record_id},
                       html=html)
    except OSError as e:
      after = "at the start of the file" if offset is None else f"after the record at offset {offset}"
      yield ReadError("warc_malformed", path, f"{e} ({after})")


def _read_text(spec, path, relname, min_chars, max_chars) -> Iterator[Document | ReadError]:
  try:
    size = os.path.getsize(path)
    if size > _MAX_BYTES_PER_CHAR * max_chars:
      yield ReadError("too_long", path, f"{size} bytes, more than {max_chars} characters")
      return
    with open(path, "rb") as file:
      raw = file.read()
  except OSError as e:
    yield ReadError("unreadable_file", path, e.strerror or str(e))
    return
  try:
    content = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    yield ReadError("invalid_utf8", path, f"byte {e.start}: {e.reason}")
    return
  error = _length_error(len(content), path, min_chars, max_chars)
  if error:
    yield error
    return
  doc_id = f"{spec.name}/{relname}#{0:08d}"
  if path.lower().endswith(_HTML_SUFFIXES):
    yield Document(id=doc_id, source=spec.name, text="", html=content)
  else:
    yield Document(id=doc_id, source=spec.name, text=content)


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "warc": _read_warc, "text": _read_text}


def read_file(spec: ml_collections.ConfigDict, path: str, relname: str, *, min_chars: int,
              max_chars: int) -> Iterator[Document | ReadError]:
  """Streams the documents of one file of a source, and a ReadError for each record that cannot be read.

  Args:
    spec: the `source(...)` ConfigDict the file belongs to.
    path: the file, as `list_files` returns it.
    relname: its relative name (the file's part of default document ids).
    min_chars: records with fewer characters of text (of HTML for WARC) yield ReadError "empty".
    max_chars: records with more yield ReadError "too_long".

  Yields:
    Document (source = spec.name) or ReadError; a truncated compressed file yields its
    documents up to the cut, then one "truncated_file" error.

  Raises:
    ValueError: unknown `spec.format`.
  """
  return _READERS[_check_format(spec)](spec, path, relname, min_chars, max_chars)


def _read_files(spec, files, min_chars, max_chars) -> Iterator[Document | ReadError]:
  for path, relname in files:
    yield from read_file(spec, path, relname, min_chars=min_chars, max_chars=max_chars)


def read(spec: ml_collections.ConfigDict, *, min_chars: int, max_chars: int) -> Iterator[Document | ReadError]:
  """Streams every file of a source in `list_files` order (files are listed, and path errors raised, at once).

  Args:
    spec: a `source(...)` ConfigDict.
    min_chars: see `read_file`.
    max_chars: see `read_file`.
  """
  return _read_files(spec, list_files(spec), min_chars, max_chars)


def read_documents(specs: Iterable[ml_collections.ConfigDict], *, min_chars: int = 1,
                   max_chars: int = 10_000_000) -> Iterator[Document]:
  """The readable documents of several sources, in order, read errors skipped.

  Args:
    specs: `source(...)` ConfigDicts; all are listed (and path errors raised) at once.
    min_chars: see `read_file`.
    max_chars: see `read_file`.
  """
  listed = [(spec, list_files(spec)) for spec in specs]

  def documents():
    for spec, files in listed:
      for item in _read_files(spec, files, min_chars, max_chars):
        if isinstance(item, Document):
          yield item

  return documents()


def total_bytes(specs: Iterable[ml_collections.ConfigDict]) -> int:
  """Sum of the on-disk sizes of every file of `specs` (compressed sizes for compressed files)."""
  return sum(os.path.getsize(path) for spec in specs for path, _ in list_files(spec))


def _warc_digest(data: bytes) -> str:
  return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def _warc_date(value: Any) -> str:
  if value is None:
    return _DEFAULT_WARC_DATE
  if isinstance(value, datetime.datetime):
    if value.tzinfo is not None:
      value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"
  return str(value)


def _charset(content_type: str) -> str:
  """The charset parameter of a Content-Type value, utf-8 when it has none."""
  for param in content_type.split(";")[1:]:
    key, _, value = param.partition("=")
    if key.strip().lower() == "charset" and value.strip():
      return value.strip().strip('"')
  return "utf-8"


def write_warc(path: str, records: Iterable[dict]) -> list[int]:
  """Writes a WARC/1.1 file of HTTP responses (and requests); gzip-compressed per record when `path` ends in .gz.

  Args:
    path: output file; its folder is created.
    records: dicts with "url" (str), "html" (str, the response payload), "content_type"
      (HTTP Content-Type, default "text/html; charset=utf-8"; the payload is encoded with
      its charset), "date" (ISO 8601 string or datetime, default 1970-01-01T00:00:00Z),
      "type" ("response", the default, or "request"), and optionally "payload" (bytes
      written instead of the encoded html, e.g. to write invalid bytes).

  Returns:
    The byte offset of each record in the file (the offsets `read_file` reports).

  Raises:
    ValueError: a record without a url, of another type, or whose html its charset cannot encode.
  """
  compress = path.endswith(".gz")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  offsets = []
  with open(path, "wb") as file:
    for number, record in enumerate(records):
      url = record.get("url")
      record_type = record.get("type", "response")
      if not url:
        raise ValueError(f"write_warc: record {number} has no 'url'")
      if record_type == "response":
        content_type = record.get("content_type", "text/html; charset=utf-8")
        payload = record.get("payload")
        if payload is None:
          charset = _charset(content_type)
          try:
            payload = record.get("html", "").encode(charset)
          except (LookupError, UnicodeEncodeError) as e:
            raise ValueError(f"write_warc: record {number} ({url}): html cannot be encoded as {charset}: {e}") from None
        block = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
                 .encode("utf-8") + payload)
      elif record_type == "request":
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        payload = b""
        block = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode("utf-8")
      else:
        raise ValueError(f"write_warc: record {number} ({url}): type {record_type!r}; expected response or request")
      date = _warc_date(record.get("date"))
      record_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{number} {record_type} {url} {date}")
      header = (f"WARC/1.1\r\nWARC-Type: {record_type}\r\nWARC-Record-ID: <urn:uuid:{record_id}>\r\n"
                f"WARC-Date: {date}\r\nWARC-Target-URI: {url}\r\n"
                f"Content-Type: application/http; msgtype={record_type}\r\n"
                f"WARC-Block-Digest: {_warc_digest(block)}\r\n"
                + (f"WARC-Payload-Digest: {_warc_digest(payload)}\r\n" if record_type == "response" else "")
                + f"Content-Length: {len(block)}\r\n\r\n")
      data = header.encode("utf-8") + block + b"\r\n\r\n"
      offsets.append(file.tell())
      file.write(gzip.compress(data, mtime=0) if compress else data)
  return offsets
