"""Repeated-substring removal with a suffix array, after Lee et al. 2022 (ExactSubstr).

Lee et al. ("Deduplicating Training Data Makes Language Models Better", 2022) build a suffix
array over the whole tokenised corpus and remove every span of at least 50 tokens that also
occurs elsewhere. This stage does the same, keeping the first occurrence: every window of
`min_tokens` units that also occurs at a smaller (document id, position) is removed; the
occurrence with the smallest (document id, position) stays, so a paragraph shared by many
documents survives in exactly one of them and the result does not depend on input order.

Units (`config.substring_dedup.unit`):

* ``tokens``: words and punctuation marks (regex ``\\w+|[^\\w\\s]``, found with numpy by
  `fuzzy_dedup.token_spans`), each mapped to a deterministic 64-bit id (`fuzzy_dedup.span_hashes`)
  and carrying its character span;
* ``bytes``: the UTF-8 bytes of the text; a removed byte range is widened to whole characters.

Local `resolve` concatenates the documents' units in id order, each document followed by a
separator unit that occurs nowhere else (so no repeat crosses a document boundary), and sorts
all suffixes by prefix doubling (Manber & Myers 1993): each pass sorts the suffixes by the rank
pair (rank of the first k units, rank of the next k units) with one numpy argsort, doubling k,
until all ranks differ. Suffixes sharing their first `min_tokens` units are adjacent in the
suffix array; adjacent pairs are tested with the ranks of the largest power-of-two prefix length
<= `min_tokens` (two lookups per pair, all pairs at once) and the matches confirmed by comparing
their units. Each run of matching adjacent suffixes is one group of equal windows.

Memory: as in Lee et al., the whole corpus is held at once: the features (per token an 8-byte
id and two 4-byte character offsets; per byte one byte) and, during the sort, several 8-byte
arrays as long as the corpus (ranks, the next ranks, the pair keys, the argsort order, the saved
prefix ranks, the suffix array): about 90 bytes per unit at the peak (measured on 1.1 million
tokens), so about 0.1 GB per million tokens, and with unit "bytes" about five times as many units
as tokens for English text. A corpus that does not fit runs with `beam_resolve`, which instead
shuffles one (16-byte window hash, id, position) record per unit.

Decision: the merged character spans to remove, a tuple of (start, end) pairs. `apply` cuts them
out, joins the surviving pieces with a blank line, a newline or a space (the strongest break in
the removed region), counts them in ``metadata["edits"]["repeated_span"]`` and drops the
document as ``only_repeats`` when fewer than `min_remaining_chars` non-space characters remain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterable, NamedTuple

import ml_collections
import numpy as np

from data.corpus import Document
from data.stages import Drop
from data.stages.fuzzy_dedup import span_hashes
from data.stages.fuzzy_dedup import token_spans

UNITS = ("tokens", "bytes")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_NON_SPACE = re.compile(r"\S")
# Adjacent suffix pairs whose windows are compared unit by unit at a time (bounds the [pairs, min_tokens] arrays).
_VERIFY_CHUNK = 1 << 16


class Units(NamedTuple):
  """A document as the units substring dedup compares.

  ids: uint64 [n] token ids (unit "tokens") or uint8 [n] UTF-8 bytes (unit "bytes").
  starts, ends: int32 [n] character offsets of each token; None for bytes (derived on demand).
  """
  ids: np.ndarray
  starts: np.ndarray | None
  ends: np.ndarray | None


def units_of(text: str, unit: str) -> Units:
  """The units of `text`: tokens with their character spans, or UTF-8 bytes."""
  if unit == "bytes":
    return Units(np.frombuffer(text.encode("utf-8"), dtype=np.uint8), None, None)
  starts, ends, points = token_spans(text, punctuation=True)
  return Units(span_hashes(points, starts, ends), starts.astype(np.int32), ends.astype(np.int32))


def _char_offsets(units: Units) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) character offsets of every unit; a byte maps to the character it belongs to."""
  if units.starts is not None:
    return units.starts, units.ends
  is_first_byte = (units.ids & 0xC0) != 0x80  # UTF-8 continuation bytes are 10xxxxxx
  chars = np.cumsum(is_first_byte) - 1
  return chars, chars + 1


def removal_spans(window_starts: np.ndarray, window: int, units: Units) -> tuple[tuple[int, int], ...]:
  """Merged character spans covered by the removed windows of one document.

  Args:
    window_starts: int [k] unit positions where a removed window of `window` units starts.
    window: units per window (`min_tokens`).
    units: the document's `Units`.

  Returns:
    Sorted, disjoint (start, end) character spans; touching spans are merged.
  """
  num_units = len(units.ids)
  window_starts = np.asarray(window_starts, dtype=np.int64)
  if len(window_starts) == 0:
    return ()
  if window_starts.min() < 0 or window_starts.max() + window > num_units:
    raise ValueError(f"substring_dedup: removed window outside the document ({num_units} units)")
  depth = (np.bincount(window_starts, minlength=num_units + 1)
           - np.bincount(window_starts + window, minlength=num_units + 1))
  covered = np.cumsum(depth[:num_units]) > 0
  change = np.diff(np.concatenate([[0], covered.astype(np.int8), [0]]))
  first_units = np.flatnonzero(change == 1)
  last_units = np.flatnonzero(change == -1) - 1
  starts, ends = _char_offsets(units)
  merged: list[list[int]] = []
  for start, end in zip(starts[first_units].tolist(), ends[last_units].tolist()):
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return tuple((start, end) for start, end in merged)


def suffix_array(ranks: np.ndarray, saved_prefix: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Suffix array of a sequence by prefix doubling.

  Args:
    ranks: int64 [n] dense ranks (0..) of the units; equal units have equal ranks.
    saved_prefix: a power of two p; the ranks of the length-p prefixes are returned too.

  Returns:
    (suffix array int64 [n], ranks of the length-`saved_prefix` prefixes int64 [n]), the latter
    None when the suffixes are already all distinct at a shorter prefix (then no two suffixes share
    `saved_prefix` units).
  """
  n = len(ranks)
  if n >= 2**31:
    raise ValueError(f"substring_dedup: corpus of {n} units exceeds the 2^31 units of the local suffix array; "
                     "use the Beam runner")
  rank = np.asarray(ranks, dtype=np.int64)
  prefix = 1
  saved = rank if saved_prefix == 1 else None
  while n and rank.max() < n - 1:
    following = np.full(n, -1, dtype=np.int64)
    if prefix < n:
      following[:n - prefix] = rank[prefix:]
    keys = rank * (n + 1) + (following + 1)  # < n^2 + n: the pair as one int64 key
    order = np.argsort(keys)
    sorted_keys = keys[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.concatenate([[0], np.cumsum(sorted_keys[1:] != sorted_keys[:-1])])
    prefix *= 2
    if prefix == saved_prefix:
      saved = rank
  array = np.empty(n, dtype=np.int64)
  array[rank] = np.arange(n)
  return array, saved


def repeated_windows(sequence: np.ndarray, window: int) -> np.ndarray:
  """Start positions of every window that equals a window at a smaller position.

  Args:
    sequence: int64 [n] dense unit ranks; windows containing a unit that occurs once (a document
      separator) never repeat.
    window: units per window.

  Returns:
    int64 [k] sorted positions p such that sequence[p:p + window] == sequence[q:q + window] for
    some q < p (found through the suffix array, not by pairwise comparison).
  """
  n = len(sequence)
  if n < 2 or window > n:
    return np.zeros(0, np.int64)
  saved_prefix = 1 << (window.bit_length() - 1)  # largest power of two <= window
  array, prefix_ranks = suffix_array(sequence, saved_prefix)
  if prefix_ranks is None:
    return np.zeros(0, np.int64)
  left, right = array[:-1], array[1:]
  # Two prefixes of length saved_prefix, at 0 and window - saved_prefix, cover the window.
  tail = window - saved_prefix
  inside = (left + tail < n) & (right + tail < n)
  match = (prefix_ranks[left] == prefix_ranks[right]) & inside
  match &= prefix_ranks[np.minimum(left + tail, n - 1)] == prefix_ranks[np.minimum(right + tail, n - 1)]
  offsets = np.arange(window)
  candidates = np.flatnonzero(match)
  for begin in range(0, len(candidates), _VERIFY_CHUNK):
    chunk = candidates[begin:begin + _VERIFY_CHUNK]
    equal = np.all(sequence[left[chunk, None] + offsets] == sequence[right[chunk, None] + offsets], axis=1)
    match[chunk] = equal
  if not match.any():
    return np.zeros(0, np.int64)
  # A group is a maximal run of matching adjacent suffixes; it holds every occurrence of one window.
  in_group = np.zeros(n, dtype=bool)
  in_group[:-1] |= match
  in_group[1:] |= match
  starts_group = in_group & ~np.concatenate([[False], match])
  members = array[in_group]
  group_of_member = np.cumsum(starts_group[in_group]) - 1
  first_members = np.flatnonzero(starts_group[in_group])
  first_occurrence = np.minimum.reduceat(members, first_members)
  return np.sort(members[members != first_occurrence[group_of_member]])


def _window_items(item: tuple[str, Units], window: int):
  """(16-byte hash of the window's units, (id, position)) for every full window of a document."""
  doc_id, units = item
  data = units.ids.astype(units.ids.dtype.newbyteorder("<")).tobytes()
  width = units.ids.dtype.itemsize
  return [(hashlib.blake2b(data[p * width:(p + window) * width], digest_size=16).digest(), (doc_id, p))
          for p in range(len(units.ids) - window + 1)]


def _all_but_first_occurrence(group):
  _, occurrences = group
  return sorted(occurrences)[1:]


def _spans_of_joined(joined, window: int):
  doc_id, parts = joined
  if not parts["removed"]:
    return []
  spans = removal_spans(np.array(sorted(parts["removed"])), window, parts["units"][0])
  return [(doc_id, spans)]


def _join_separator(removed_region: str) -> str:
  """What replaces a removed region (with its surrounding whitespace) between two kept pieces."""
  if _BLANK_LINE.search(removed_region):
    return "\n\n"
  if "\n" in removed_region:
    return "\n"
  return " "


def cut_spans(text: str, spans: tuple[tuple[int, int], ...]) -> str:
  """`text` without `spans`; pieces are joined by the strongest break (blank line, newline, space) of the cut."""
  bounds = [0] + [offset for span in spans for offset in span] + [len(text)]
  kept = [text[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2)]
  removed = [text[start:end] for start, end in spans]
  out, region = [], ""
  for i, piece in enumerate(kept):
    trailing = ""
    if i > 0:  # whitespace after a cut belongs to the cut
      stripped = piece.lstrip()
      region += piece[:len(piece) - len(stripped)]
      piece = stripped
    if i < len(removed):  # whitespace before a cut belongs to the cut
      stripped = piece.rstrip()
      trailing = piece[len(stripped):]
      piece = stripped
    if piece:
      if out:
        out.append(_join_separator(region))
      out.append(piece)
      region = ""
    region += trailing + (removed[i] if i < len(removed) else "")
  return "".join(out)


class SubstringDedup:
  """Global stage: removes spans of >= min_tokens units that occur earlier in the corpus.

  Feature: the document's `Units`. Decision: tuple of (start, end) character spans to remove.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    """`config` is `config.substring_dedup` (min_tokens, unit, min_remaining_chars)."""
    if not isinstance(config.min_tokens, int) or config.min_tokens < 1:
      raise ValueError(f"substring_dedup.min_tokens must be a positive integer, got {config.min_tokens!r}")
    if config.unit not in UNITS:
      raise ValueError(f"substring_dedup.unit must be one of {UNITS}, got {config.unit!r}")
    if not isinstance(config.min_remaining_chars, int) or config.min_remaining_chars < 0:
      raise ValueError(f"substring_dedup.min_remaining_chars must be an integer >= 0, "
                       f"got {config.min_remaining_chars!r}")
    self.min_tokens = config.min_tokens
    self.unit = config.unit
    self.min_remaining_chars = config.min_remaining_chars

  def prepare(self, doc: Document) -> Units:
    """The document's units."""
    return units_of(doc.text, self.unit)

  def _check_units(self, doc_id: str, units: Units) -> None:
    if not isinstance(units, Units) or (units.starts is None) != (self.unit == "bytes"):
      raise ValueError(f"substring_dedup: the feature of {doc_id!r} is not the units of "
                       f"substring_dedup.unit = {self.unit!r}")

  def resolve(self, items: Iterable[tuple[str, Units]]) -> dict[str, tuple[tuple[int, int], ...]]:
    """{id: character spans to remove} for every document with a repeated span.

    Args:
      items: (document id, `Units` from `prepare`) pairs, in any order; ids are unique.

    Raises:
      ValueError: an id occurs twice, or a feature does not match `unit`.
    """
    by_id = {}
    for doc_id, units in items:
      if doc_id in by_id:
        raise ValueError(f"substring_dedup: document id {doc_id!r} occurs twice; ids must be unique")
      self._check_units(doc_id, units)
      by_id[doc_id] = units
    ids = sorted(by_id)
    lengths = np.array([len(by_id[doc_id].ids) for doc_id in ids], dtype=np.int64)
    if not len(ids) or lengths.max() < self.min_tokens:
      return {}
    # Dense ranks of the units, then one separator rank per document above all of them.
    all_ids = np.concatenate([by_id[doc_id].ids for doc_id in ids])
    _, unit_ranks = np.unique(all_ids, return_inverse=True)
    doc_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    sequence = np.empty(len(all_ids) + len(ids), dtype=np.int64)
    separators = doc_starts + lengths
    sequence[separators] = unit_ranks.max(initial=-1) + 1 + np.arange(len(ids))
    is_unit = np.ones(len(sequence), dtype=bool)
    is_unit[separators] = False
    sequence[is_unit] = unit_ranks.reshape(-1)
    removed = repeated_windows(sequence, self.min_tokens)
    doc_of_window = np.searchsorted(doc_starts, removed, side="right") - 1
    decisions = {}
    if len(removed):
      boundaries = np.flatnonzero(np.diff(doc_of_window)) + 1
      for positions, docs in zip(np.split(removed, boundaries), np.split(doc_of_window, boundaries)):
        doc = int(docs[0])
        decisions[ids[doc]] = removal_spans(positions - doc_starts[doc], self.min_tokens, by_id[ids[doc]])
    return decisions

  def apply(self, doc: Document, decision: tuple[tuple[int, int], ...] | None) -> Document | Drop:
    """The document without the spans of `decision`, or Drop("only_repeats") when too little is left."""
    if not decision:
      return doc
    text = cut_spans(doc.text, decision)
    remaining = len(_NON_SPACE.findall(text))
    if remaining < self.min_remaining_chars:
      return Drop("only_repeats", detail=f"{remaining} non-space characters left after removing "
                  f"{len(decision)} repeated spans")
    edits = dict(doc.metadata.get("edits", {}))
    edits["repeated_span"] = edits.get("repeated_span", 0) + len(decision)
    return dataclasses.replace(doc, text=text, metadata={**doc.metadata, "edits": edits})

  def beam_resolve(self):
    """PTransform: PCollection[(id, Units)] -> PCollection[(id, spans)], equal to `resolve`."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    window = self.min_tokens

    class _Resolve(beam.PTransform):

      def expand(self, features):
        removed = (features
                   | "window hashes" >> beam.FlatMap(_window_items, window)
                   | "group windows" >> beam.GroupByKey()
                   | "all but first occurrence" >> beam.FlatMap(_all_but_first_occurrence))
        return ({"units": features, "removed": removed}
                | "join documents" >> beam.CoGroupByKey()
                | "merge spans" >> beam.FlatMap(_spans_of_joined, window))

    return _Resolve()
