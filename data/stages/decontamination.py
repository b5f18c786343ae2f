"""Decontamination: drops training documents that share a word n-gram with an evaluation set.

The rule is the 13-gram overlap test of GPT-3 (Brown et al. 2020, appendix C): a training
document is contaminated when any run of `decontamination.ngram` consecutive words (13 by
default) also occurs in an evaluation text. Words are ``\\w+`` runs, lowercased when
`decontamination.lowercase` is set, so punctuation and spacing differences do not hide an
overlap.

Evaluation texts come from the files in `decontamination.eval_files`:

* JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``): every string value of every record is
  one evaluation text, at any depth, so the layouts of the evaluation harnesses are covered
  without per-task code: ``{"ctx": ..., "endings": [...]}`` (HellaSwag),
  ``{"question": ..., "choices": {"text": [...]}}`` (ARC), ``{"text": ...}`` (LAMBADA).
  Keys and non-string values (labels, ids as numbers) are not text.
* any other file: each non-blank paragraph (text between blank lines) is one evaluation text.

An evaluation text shorter than `ngram` words has no n-gram and is ignored: short strings
(answer options such as "Paris" or "True", labels) are common phrases, and matching them
would drop ordinary documents. Strings of one record are not joined, as the boundary between
a question and its answer options never occurs as such in training text.

Each n-gram is identified by the first 8 bytes of the BLAKE2b digest of its words joined
by single spaces: deterministic across processes (the stage is shipped to worker processes)
and, at 64 bits, without practical collisions at evaluation-set sizes. The hashes are kept
in one sorted numpy array (8 bytes per n-gram) rather than a Python set (about 70).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from typing import Iterator

import ml_collections
import numpy as np

from data.corpus import Document
from data.stages import Drop

_WORD = re.compile(r"\w+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
# Windows hashed and looked up together: large enough for numpy to pay off, small enough that
# a contaminated document stops soon after its first shared n-gram.
_WINDOWS_PER_LOOKUP = 256


def ngram_hash(words: list[str]) -> int:
  """The 64-bit identifier of an n-gram given as its list of words."""
  return int.from_bytes(hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=8).digest(), "little")


def _open_text(path: str) -> io.TextIOBase:
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  if path.endswith(".zst"):
    import zstandard  # pylint: disable=import-outside-toplevel
    return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                            encoding="utf-8")
  return open(path, encoding="utf-8")


def _strings(value) -> Iterator[str]:
  """Every string inside a JSON value (dict values and list items, recursively; keys excluded)."""
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for item in value.values():
      yield from _strings(item)
  elif isinstance(value, list):
    for item in value:
      yield from _strings(item)


def eval_texts(path: str) -> Iterator[str]:
  """The evaluation texts of one file (see the module docstring for JSONL and plain-text files).

  Args:
    path: a JSONL file (.jsonl / .jsonl.gz / .jsonl.zst) or a plain-text file.

  Raises:
    FileNotFoundError: `path` does not exist (the message names `decontamination.eval_files`).
    ValueError: a JSONL line is not valid JSON (the message names the file and line).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"decontamination.eval_files: {path} (evaluation file not found; expected a JSONL or "
                            "plain-text file)")
  with _open_text(path) as f:
    if not path.endswith(_JSONL_SUFFIXES):
      for paragraph in _PARAGRAPH_BREAK.split(f.read()):
        if paragraph.strip():
          yield paragraph
      return
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"decontamination.eval_files: {path}:{line_number}: not valid JSON ({e.msg})") from None
      yield from _strings(record)


class Decontamination:
  """Drops documents sharing a word n-gram with an evaluation set.

  Args:
    config: `config.decontamination`: eval_files (paths; '' entries ignored; a comma-separated
      string is also accepted), ngram (words per n-gram, >= 1), lowercase.

  Attributes:
    eval_names: base names of the evaluation files, in config order.
    num_texts: evaluation texts read; num_short_texts of them had fewer than `ngram` words.
    num_ngrams: distinct evaluation n-grams.

  Drop reason "contaminated", detail "hellaswag.jsonl: 'the first shared n-gram'".
  """

  def __init__(self, config: ml_collections.ConfigDict):
    if isinstance(config.ngram, bool) or int(config.ngram) != config.ngram or config.ngram < 1:
      raise ValueError(f"decontamination.ngram must be an integer >= 1, got {config.ngram!r}")
    self.ngram = int(config.ngram)
    self.lowercase = bool(config.lowercase)
    files = config.eval_files
    if isinstance(files, str):
      files = files.split(",")
    paths = [p.strip() for p in files if p and p.strip()]
    self.eval_names = [os.path.basename(p) for p in paths]
    self.num_texts = self.num_short_texts = 0
    hashes, file_indices = [], []
    for index, path in enumerate(paths):
      file_hashes = []
      for text in eval_texts(path):
        self.num_texts += 1
        words = self.words(text)
        if len(words) < self.ngram:
          self.num_short_texts += 1
          continue
        file_hashes.extend(ngram_hash(words[i:i + self.ngram]) for i in range(len(words) - self.ngram + 1))
      hashes.append(np.array(file_hashes, np.uint64))
      file_indices.append(np.full(len(file_hashes), index, np.int32))
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    all_indices = np.concatenate(file_indices) if file_indices else np.zeros(0, np.int32)
    # Sorted by hash, then file: an n-gram found in several files is reported under the first listed.
    order = np.lexsort((all_indices, all_hashes))
    all_hashes, all_indices = all_hashes[order], all_indices[order]
    first = np.ones(len(all_hashes), bool)
    first[1:] = all_hashes[1:] != all_hashes[:-1]
    self._hashes, self._file_indices = all_hashes[first], all_indices[first]
    self.num_ngrams = len(self._hashes)

  def words(self, text: str) -> list[str]:
    """The words of `text` as n-grams see them (\\w+ runs, lowercased when configured)."""
    return _WORD.findall(text.lower() if self.lowercase else text)

  def first_match(self, text: str) -> tuple[str, str] | None:
    """(evaluation file base name, n-gram text) of the first n-gram `text` shares, or None."""
    if not self.num_ngrams:
      return None
    words = self.words(text)
    num_windows = len(words) - self.ngram + 1
    for start in range(0, max(num_windows, 0), _WINDOWS_PER_LOOKUP):
      stop = min(start + _WINDOWS_PER_LOOKUP, num_windows)
      window_hashes = np.array([ngram_hash(words[i:i + self.ngram]) for i in range(start, stop)], np.uint64)
      positions = np.minimum(np.searchsorted(self._hashes, window_hashes), self.num_ngrams - 1)
      hits = np.flatnonzero(self._hashes[positions] == window_hashes)
      if hits.size:
        window = start + int(hits[0])
        name = self.eval_names[self._file_indices[positions[hits[0]]]]
        return name, " ".join(words[window:window + self.ngram])
    return None

  def __call__(self, doc: Document) -> Document | Drop:
    """`doc` unchanged, or a Drop naming the evaluation file and the first shared n-gram."""
    match = self.first_match(doc.text)
    if match is None:
      return doc
    name, ngram_text = match
    return Drop("contaminated", f"{name}: '{ngram_text}'")
