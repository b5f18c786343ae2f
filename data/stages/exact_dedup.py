"""Exact deduplication: documents whose normalised text is identical keep only the smallest id.

The text is normalised before hashing (lowercase, punctuation and symbols removed, runs of
whitespace collapsed to one space; each step switched by `config.exact_dedup`) so that copies
that differ only in case, punctuation or spacing count as the same document, as in the
exact-match stage of the deduplication pipelines of Penedo et al. 2023 (RefinedWeb) and
Soldaini et al. 2024 (Dolma). The normalised text is hashed with BLAKE2b (16 bytes, so an
accidental collision is out of reach for any corpus size); the feature of a document is
that digest, and every document whose digest equals that of a smaller id is dropped as
``exact_duplicate``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

import ml_collections

from data.corpus import Document
from data.stages import Drop

DIGEST_BYTES = 16
_PUNCTUATION = re.compile(r"[^\w\s]+")
_WHITESPACE = re.compile(r"\s+")


def normalise(text: str, lowercase: bool, strip_punctuation: bool, collapse_whitespace: bool) -> str:
  """The text that two documents must share to be exact duplicates.

  Args:
    text: the document text.
    lowercase: fold case.
    strip_punctuation: delete every character that is neither a word character nor whitespace
      (punctuation and symbols), so "Hello, world!" and "Hello world" agree.
    collapse_whitespace: replace each run of whitespace with one space and strip both ends.

  Returns:
    The normalised text.
  """
  if lowercase:
    text = text.lower()
  if strip_punctuation:
    text = _PUNCTUATION.sub("", text)
  if collapse_whitespace:
    text = _WHITESPACE.sub(" ", text).strip()
  return text


def digest(text: str) -> bytes:
  """BLAKE2b digest (`DIGEST_BYTES` bytes) of the UTF-8 encoding of `text`."""
  return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def _as_digest_key(item: tuple[str, bytes]) -> tuple[bytes, str]:
  doc_id, feature = item
  return feature, doc_id


def _all_but_smallest(group: tuple[bytes, Iterable[str]]) -> Iterable[tuple[str, str]]:
  """(id, kept id) for every id of one digest group except the smallest."""
  _, ids = group
  ordered = sorted(ids)
  return [(doc_id, ordered[0]) for doc_id in ordered[1:]]


class ExactDedup:
  """Global stage: drops every document whose normalised text equals that of a smaller id.

  Feature: the 16-byte digest of the normalised text. Decision: the id of the kept copy (str).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    """`config` is `config.exact_dedup` (lowercase, strip_punctuation, collapse_whitespace)."""
    for key in ("lowercase", "strip_punctuation", "collapse_whitespace"):
      if not isinstance(config[key], bool):
        raise ValueError(f"exact_dedup.{key} must be True or False, got {config[key]!r}")
    self.lowercase = config.lowercase
    self.strip_punctuation = config.strip_punctuation
    self.collapse_whitespace = config.collapse_whitespace

  def prepare(self, doc: Document) -> bytes:
    """The digest of the document's normalised text."""
    return digest(normalise(doc.text, self.lowercase, self.strip_punctuation, self.collapse_whitespace))

  def resolve(self, items: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """{id: kept id} for every document that duplicates a smaller id.

    Args:
      items: (document id, digest from `prepare`) pairs, in any order; ids are unique.

    Raises:
      ValueError: an id occurs twice.
    """
    smallest: dict[bytes, str] = {}
    ids: dict[str, bytes] = {}
    for doc_id, feature in items:
      if doc_id in ids:
        raise ValueError(f"exact_dedup: document id {doc_id!r} occurs twice; ids must be unique")
      ids[doc_id] = feature
      kept = smallest.get(feature)
      if kept is None or doc_id < kept:
        smallest[feature] = doc_id
    return {doc_id: smallest[feature] for doc_id, feature in ids.items() if smallest[feature] != doc_id}

  def apply(self, doc: Document, decision: str | None) -> Document | Drop:
    """The document unchanged, or Drop("exact_duplicate") when `decision` names the kept copy."""
    if decision is None:
      return doc
    return Drop("exact_duplicate", detail=f"of {decision}")

  def beam_resolve(self):
    """PTransform: PCollection[(id, digest)] -> PCollection[(id, kept id)], equal to `resolve`."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    class _Resolve(beam.PTransform):

      def expand(self, features):
        return (features
                | "key by digest" >> beam.Map(_as_digest_key)
                | "group copies" >> beam.GroupByKey()
                | "all but smallest id" >> beam.FlatMap(_all_but_smallest))

    return _Resolve()
