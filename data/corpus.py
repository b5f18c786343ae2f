"""Documents and the corpora the project can build without any download.

A `Document` is the unit every later stage speaks: an id, the domain (source) it
belongs to, and its text. The embedded corpus is built from text present on every
Python installation:

* domain ``docs``: the language reference topics shipped in ``pydoc_data`` plus, for
  every standard-library module, its module / class / function docstrings;
* domain ``code``: the standard library's own ``.py`` source files.

User corpora are a JSONL file (one ``{"text": ..., "id": ..., "source": ...}`` object per
line; only ``text`` is required) or a folder of ``.jsonl`` shards (what `data.curate`
writes) and ``.txt`` / ``.md`` / ``.py`` files.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import sysconfig
from typing import Iterable, Iterator

_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")


@dataclasses.dataclass(frozen=True)
class Document:
  id: str  # unique within a corpus; also the key of the train / validation split
  source: str  # domain name, e.g. "docs" or "code"
  text: str  # plain text; empty for a web record until HTML extraction fills it
  url: str | None = None  # where the document was fetched from, when known
  metadata: dict = dataclasses.field(default_factory=dict, hash=False)  # JSON-serialisable extras
  html: str | None = None  # raw HTML of a web record, dropped once extraction has produced `text`


def stdlib_source_files() -> list[str]:
  """Sorted paths of the standard library's .py files, tests and third-party packages excluded."""
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
    files += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".py")]
  return files


def _module_docstrings(source: str) -> str:
  """The module's docstring followed by each class / function docstring, headed by its name."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):  # a few stdlib files are Python 2 fixtures or deliberately broken
    return ""
  parts = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node)
      if doc:
        parts.append(doc if isinstance(node, ast.Module) else f"{node.name}\n{doc}")
  return "\n\n".join(parts)


def embedded_documents() -> Iterator[Document]:
  """The embedded default corpus: `docs` (pydoc topics, docstrings) and `code` (stdlib source)."""
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel

  for name in sorted(topics):
    yield Document(id=f"topic:{name}", source="docs", text=topics[name])
  root = sysconfig.get_paths()["stdlib"]
  for path in stdlib_source_files():
    try:
      with open(path, encoding="utf-8") as f:
        source = f.read()
    except (UnicodeDecodeError, OSError):
      continue
    rel = os.path.relpath(path, root)
    doc = _module_docstrings(source)
    if doc:
      yield Document(id=f"docstrings:{rel}", source="docs", text=doc)
    if source.strip():
      yield Document(id=f"source:{rel}", source="code", text=source)


def user_documents(path: str) -> Iterator[Document]:
  """Documents of a JSONL file or a folder of text and JSONL files (see module docstring).

  A folder's ``.jsonl`` files (such as the shards `python -m data.curate` writes) are read
  as JSONL; its other text files are one document each.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: a JSONL line is not an object with a string "text" field (names file and line).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"data path does not exist: {path!r}")
  if not os.path.isdir(path):
    yield from _jsonl_documents(path, os.path.splitext(os.path.basename(path))[0])
    return
  for directory, subdirs, names in os.walk(path):
    subdirs.sort()
    for name in sorted(names):
      full = os.path.join(directory, name)
      if name.endswith(".jsonl"):
        yield from _jsonl_documents(full, os.path.basename(os.path.normpath(path)))
      elif name.endswith(_TEXT_SUFFIXES):
        with open(full, encoding="utf-8", errors="replace") as f:
          rel = os.path.relpath(full, path)
          yield Document(id=rel, source=os.path.basename(os.path.normpath(path)), text=f.read())


def _jsonl_documents(path: str, default_source: str) -> Iterator[Document]:
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f'{path}:{line_number}: expected an object with a string "text" field')
      yield Document(
          id=str(record.get("id", f"{default_source}:{line_number}")),
          source=str(record.get("source", default_source)),
          text=record["text"],
          url=record.get("url"),
      )


def in_validation(doc_id: str, validation_fraction: float, seed: int) -> bool:
  """Whether a document belongs to the validation split.

  Decided by a seeded hash of the id alone, so the split is fixed for a given seed, does
  not depend on corpus order or size, and never puts one document in both splits.
  """
  digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2**64 < validation_fraction


def split(
    documents: Iterable[Document], validation_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
  """(train, validation) lists of the documents, split by document id."""
  train, validation = [], []
  for doc in documents:
    (validation if in_validation(doc.id, validation_fraction, seed) else train).append(doc)
  return train, validation


def load(path: str, validation_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
  """(train, validation) documents of `path`, or of the embedded corpus when `path` is ''."""
  documents = embedded_documents() if not path else user_documents(path)
  return split(documents, validation_fraction, seed)
