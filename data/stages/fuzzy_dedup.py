"""Near-duplicate removal with MinHash signatures, LSH banding and connected components.

Each document becomes a MinHash signature (Broder 1997) of its set of word shingles
(`shingle_words` consecutive words): `num_permutations` hash functions, each keeping the
smallest hash of any shingle, so that the share of equal positions in two signatures is an
unbiased estimate of the Jaccard similarity of the two shingle sets (standard error
sqrt(J (1 - J) / num_permutations)). Locality-sensitive hashing (Indyk & Motwani 1998;
Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3) cuts the signature into
`bands` bands of `rows` rows; documents with one identical band are candidates, with
probability 1 - (1 - J^rows)^bands. Candidates are then verified: a pair is a duplicate only
when its estimated Jaccard is at least `threshold`. Duplicates are linked into connected
components (union-find) and every component keeps only its smallest id. The defaults (5-word
shingles, 128 permutations in 32 bands of 4 rows, threshold 0.7) follow the MinHash setups of
Lee et al. 2022 ("Deduplicating Training Data Makes Language Models Better") and Penedo et al.
2023 (RefinedWeb); with 32 x 4 a pair at J = 0.7 becomes a candidate with probability 0.9996
and a pair at J = 0.3 with probability 0.23.

Signatures are computed without a Python loop over shingles:

* the words (the matches of the regex ``\\w+``, found with numpy over the code points of the
  text) are hashed to 64 bits all at once: a polynomial in their code points (mod 2^64) through
  the MurmurHash3 64-bit finaliser, deterministic across processes and runs, unlike Python's
  salted `hash()`;
* the hashes of `shingle_words` consecutive words are combined into a shingle hash with
  vectorised uint64 polynomial arithmetic and mixed with the MurmurHash3 64-bit finaliser,
  whose top 32 bits are kept;
* permutation i is the affine bijection h -> a_i * h + b_i (mod 2^32, a_i odd) of the mixed
  hash, applied to all shingles and all permutations at once as one [shingles, permutations]
  uint32 array whose column minimum is the signature. The parameters a_i, b_i are derived
  from `seed` with BLAKE2b, so they do not depend on any random number generator's version.

The local `resolve` first merges documents with identical signatures, then verifies the
candidate pairs of all bands in one vectorised comparison (buckets of two) or bucket by bucket
(larger buckets, skipping buckets whose members are already connected). `beam_resolve` groups
by (band index, band hash) with GroupByKey, verifies inside each bucket, gathers the (small)
edge list with CombineGlobally for the union-find, and joins the signatures back to attach
the estimated Jaccard to the kept copy; it gives exactly the decisions of `resolve`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Iterable, Sequence

import ml_collections
import numpy as np

from data.corpus import Document
from data.stages import Drop

_WORD = re.compile(r"\w+")
# Odd 64-bit multiplier of the polynomial that combines word hashes into shingle hashes and row
# values into band hashes (any odd constant with well-spread bits serves; this is 2^64 / golden ratio).
_COMBINE = np.uint64(0x9E3779B97F4A7C15)
# Odd base of the polynomial hash of a token's code points, and the multiplier that mixes in its length.
_CHAR_BASE = 0xD6E8FEB86659FD93
_LENGTH_MIX = np.uint64(0xA0761D6478BD642F)
_EMPTY = np.uint32(0xFFFFFFFF)
# Shingles per block of the [shingles, permutations] product: bounds the temporary array of a
# very long document to 4096 * num_permutations * 4 bytes.
_BLOCK_SHINGLES = 4096
_BMP = 0x10000
_WORD_CLASS, _SPACE_CLASS = 1, 2
# Powers of _CHAR_BASE (and of its inverse mod 2^64) kept per process for texts up to this long.
_CACHED_POWERS = 1 << 20
_power_tables = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


@functools.lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
  """uint8 [65536]: _WORD_CLASS / _SPACE_CLASS / 0 per Basic Multilingual Plane character, as `re`'s \\w / \\s."""
  chars = [chr(code) for code in range(_BMP)]
  return np.array([_WORD_CLASS if c.isalnum() or c == "_" else _SPACE_CLASS if c.isspace() else 0 for c in chars],
                  dtype=np.uint8)


def codepoints(text: str) -> np.ndarray:
  """uint32 [len(text)]: the code points of `text` (index i is text[i])."""
  return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def token_spans(text: str, punctuation: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Spans of the regex tokens ``\\w+`` (words) or ``\\w+|[^\\w\\s]`` (words and marks), vectorised.

  Gives exactly the matches of Python's `re` for these patterns (a word character is one with
  `str.isalnum()` or "_", whitespace one with `str.isspace()`), found with numpy over the code
  points instead of a Python object per token.

  Args:
    text: the text.
    punctuation: also return every character that is neither a word character nor whitespace
      as a token of its own.

  Returns:
    (starts int64 [k], ends int64 [k], code points uint32 [len(text)]), tokens in text order.
  """
  points = codepoints(text)
  classes = _bmp_classes()[np.minimum(points, _BMP - 1)]
  if len(points) and points.max() >= _BMP:  # rare (emoji, historic scripts): classify each distinct one
    for code in np.unique(points[points >= _BMP]).tolist():
      char = chr(code)
      classes[points == code] = _WORD_CLASS if char.isalnum() else _SPACE_CLASS if char.isspace() else 0
  padded = np.zeros(len(points) + 2, dtype=np.int8)
  padded[1:-1] = classes == _WORD_CLASS
  change = np.diff(padded)  # +1 where a word starts, -1 one past where it ends
  starts, ends = np.flatnonzero(change == 1), np.flatnonzero(change == -1)
  if punctuation:
    marks = np.flatnonzero(classes == 0)
    starts, ends = np.concatenate([starts, marks]), np.concatenate([ends, marks + 1])
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
  return starts, ends, points


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
  """uint64 [>= length] each: _CHAR_BASE^k and _CHAR_BASE^-k mod 2^64 for k = 0, 1, ...

  Tables up to _CACHED_POWERS entries are kept per process; longer ones are built for the call.
  """
  global _power_tables  # pylint: disable=global-statement
  powers, inverse = _power_tables if length <= _CACHED_POWERS else (_power_tables[0][:1], _power_tables[1][:1])
  while len(powers) < length:
    size = len(powers)
    powers = np.concatenate([powers, powers * np.uint64(pow(_CHAR_BASE, size, 1 << 64))])
    inverse = np.concatenate([inverse, inverse * np.uint64(pow(_CHAR_BASE, -size, 1 << 64))])
  if len(powers) <= _CACHED_POWERS:
    _power_tables = (powers, inverse)
  return powers, inverse


def span_hashes(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """Deterministic 64-bit hashes of the strings points[starts[i]:ends[i]].

  The polynomial sum_k (points[start + k] + 1) * base^k mod 2^64 (odd base), taken from one
  prefix sum over the text and shifted back by base^-start, plus the length, through the
  MurmurHash3 finaliser: equal strings get equal hashes wherever they occur, in any process.

  Args:
    points: uint32 [n] code points (`codepoints`).
    starts, ends: int [k] span bounds.

  Returns:
    uint64 [k].
  """
  if len(starts) == 0:
    return np.zeros(0, dtype=np.uint64)
  powers, inverse = _powers(len(points))
  terms = points.astype(np.uint64)
  terms += np.uint64(1)
  terms *= powers[:len(points)]
  prefix = np.zeros(len(points) + 1, dtype=np.uint64)
  np.cumsum(terms, out=prefix[1:])
  sums = (prefix[ends] - prefix[starts]) * inverse[starts]
  return _fmix64(sums + (ends - starts).astype(np.uint64) * _LENGTH_MIX)


def words_of(text: str, lowercase: bool = True) -> list[str]:
  """The words (regex ``\\w+``) of `text`, lowercased when `lowercase`."""
  return _WORD.findall(text.lower() if lowercase else text)


def word_hashes(text_or_words: str | Sequence[str], lowercase: bool = True) -> np.ndarray:
  """Deterministic 64-bit hashes of the words of a text, or of a list of words, in order.

  Args:
    text_or_words: a text (its words are the regex ``\\w+`` matches) or a sequence of words
      (each hashed whole; empty strings are skipped).
    lowercase: lowercase first.

  Returns:
    uint64 [num_words]; a word has the same hash in a text and in a list.
  """
  if isinstance(text_or_words, str):
    starts, ends, points = token_spans(text_or_words.lower() if lowercase else text_or_words, punctuation=False)
    return span_hashes(points, starts, ends)
  words = [w for w in text_or_words if w]
  joined = "".join(words)
  if lowercase and joined != joined.lower():  # lowercased word by word: lower() can change lengths
    words = [w.lower() for w in words]
    joined = "".join(words)
  lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
  ends = np.cumsum(lengths)
  return span_hashes(codepoints(joined), ends - lengths, ends)


def _fmix64(x: np.ndarray) -> np.ndarray:
  """MurmurHash3's 64-bit finaliser on a uint64 array: every output bit depends on every input bit."""
  x = x ^ (x >> np.uint64(33))
  x *= np.uint64(0xFF51AFD7ED558CCD)
  x ^= x >> np.uint64(33)
  x *= np.uint64(0xC4CEB9FE1A85EC53)
  x ^= x >> np.uint64(33)
  return x


def shingle_hashes(hashes: np.ndarray, shingle_words: int) -> np.ndarray:
  """32-bit hashes of the word shingles of a document.

  Args:
    hashes: uint64 [num_words], the word hashes in document order (`word_hashes`).
    shingle_words: words per shingle; a document with fewer words is one shingle of all of them.

  Returns:
    uint32 [max(num_words - shingle_words + 1, 1)]; empty when there are no words.
  """
  num_words = len(hashes)
  if num_words == 0:
    return np.zeros(0, np.uint32)
  width = min(shingle_words, num_words)
  count = num_words - width + 1
  combined = hashes[:count].copy()
  for offset in range(1, width):
    combined *= _COMBINE
    combined += hashes[offset:offset + count]
  return (_fmix64(combined) >> np.uint64(32)).astype(np.uint32)


@functools.lru_cache(maxsize=16)
def permutation_parameters(num_permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(a, b): uint32 [num_permutations] each, a odd, derived from `seed` with BLAKE2b."""
  raw = b"".join(
      hashlib.blake2b(f"minhash:{seed}:{i}".encode(), digest_size=8).digest() for i in range(num_permutations))
  words = np.frombuffer(raw, dtype="<u4").reshape(num_permutations, 2)
  a = words[:, 0] | np.uint32(1)
  b = words[:, 1].copy()
  a.flags.writeable = False
  b.flags.writeable = False
  return a, b


def minhash(shingles: np.ndarray, num_permutations: int, seed: int) -> np.ndarray:
  """MinHash of a set of 32-bit shingle hashes.

  Args:
    shingles: uint32 [num_shingles] (repeats do not matter).
    num_permutations: signature length.
    seed: seed of the permutations (`permutation_parameters`).

  Returns:
    uint32 [num_permutations]: column minima of (a * shingle + b) mod 2^32 over the shingles;
    all 0xFFFFFFFF for no shingles.
  """
  a, b = permutation_parameters(num_permutations, seed)
  result = np.full(num_permutations, _EMPTY, np.uint32)
  block = np.empty((min(len(shingles), _BLOCK_SHINGLES), num_permutations), np.uint32)
  for start in range(0, len(shingles), _BLOCK_SHINGLES):
    part = shingles[start:start + _BLOCK_SHINGLES]
    values = block[:len(part)]
    np.multiply(part[:, None], a, out=values)
    values += b
    np.minimum(result, values.min(axis=0), out=result)
  return result


def signature(text_or_words: str | Sequence[str], num_permutations: int = 128, shingle_words: int = 5,
              seed: int = 1, lowercase: bool = True) -> np.ndarray:
  """MinHash signature of the word-shingle set of a text.

  Args:
    text_or_words: the text (its words are the regex ``\\w+`` matches) or its words; a text and
      its `words_of` list give the same signature.
    num_permutations: signature length.
    shingle_words: words per shingle (fewer words: the whole sequence is one shingle).
    seed: seed of the permutations; signatures compare only under the same seed and length.
    lowercase: lowercase the words first.

  Returns:
    uint32 [num_permutations]; all 0xFFFFFFFF when there are no words.
  """
  shingles = shingle_hashes(word_hashes(text_or_words, lowercase), shingle_words)
  return minhash(shingles, num_permutations, seed)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
  """Estimated Jaccard similarity: the share of equal positions of two signatures of one shape."""
  if sig_a.shape != sig_b.shape:
    raise ValueError(f"signatures of different shapes cannot be compared: {sig_a.shape} vs {sig_b.shape}")
  return int(np.count_nonzero(sig_a == sig_b)) / sig_a.shape[-1]


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
  """64-bit hashes of the LSH bands of one signature [P] or of a batch [N, P].

  Args:
    sig: uint32 [..., P] signatures with P == bands * rows.
    bands: number of bands.
    rows: signature positions per band.

  Returns:
    uint64 [..., bands]; two signatures agree on band i exactly when their rows agree (up to
    64-bit hash collisions, which the Jaccard verification of candidates makes harmless).
  """
  if sig.shape[-1] != bands * rows:
    raise ValueError(f"signature length {sig.shape[-1]} != bands ({bands}) * rows ({rows})")
  rows_of_bands = sig.reshape(*sig.shape[:-1], bands, rows).astype(np.uint64)
  combined = rows_of_bands[..., 0].copy()
  for row in range(1, rows):
    combined *= _COMBINE
    combined += rows_of_bands[..., row]
  return _fmix64(combined)


def _are_duplicates(equal_positions, num_permutations: int, threshold: float):
  """Whether estimated Jaccard (equal positions / length) reaches the threshold; scalars or arrays."""
  return equal_positions / num_permutations >= threshold


class _UnionFind:
  """Disjoint sets over hashable, ordered items; the root of a set is its smallest item."""

  def __init__(self):
    self.parent: dict = {}

  def find(self, item):
    parent = self.parent
    root = item
    while parent.get(root, root) != root:
      root = parent[root]
    while item != root:  # path compression
      parent[item], item = root, parent[item]
    return root

  def union(self, a, b) -> bool:
    """Joins the sets of a and b; False when they were already one."""
    root_a, root_b = self.find(a), self.find(b)
    if root_a == root_b:
      return False
    if root_a < root_b:
      self.parent[root_b] = root_a
    else:
      self.parent[root_a] = root_b
    return True


def link_bucket(signatures: np.ndarray, threshold: float) -> list[tuple[int, int]]:
  """Edges (i, j), i < j, of a spanning forest of the verified duplicate pairs of one bucket.

  Args:
    signatures: uint32 [m, P], the bucket's distinct signatures.
    threshold: the smallest estimated Jaccard of a duplicate pair.

  Returns:
    Pairs of row indices whose connected components are those of all pairs of rows with
    estimated Jaccard >= threshold (pairs already connected are not repeated).
  """
  num_permutations = signatures.shape[1]
  components = _UnionFind()
  edges = []
  for j in range(1, len(signatures)):
    equal = np.count_nonzero(signatures[:j] == signatures[j], axis=1)
    for i in np.flatnonzero(_are_duplicates(equal, num_permutations, threshold)):
      if components.union(int(i), j):
        edges.append((int(i), j))
  return edges


def _bucket_edges(bucket: tuple[object, Iterable[tuple[str, np.ndarray]]],
                  threshold: float) -> list[tuple[str, str]]:
  """(smaller id, larger id) duplicate edges of one LSH bucket; identical signatures are linked first."""
  _, members = bucket
  members = sorted(members, key=lambda member: member[0])
  if len(members) < 2:
    return []
  edges, distinct_ids, distinct_sigs, first_with = [], [], [], {}
  for doc_id, sig in members:
    first = first_with.setdefault(sig.tobytes(), doc_id)
    if first != doc_id:
      edges.append((first, doc_id))
    else:
      distinct_ids.append(doc_id)
      distinct_sigs.append(sig)
  if len(distinct_ids) > 1:
    edges += [(distinct_ids[i], distinct_ids[j]) for i, j in link_bucket(np.stack(distinct_sigs), threshold)]
  return edges


def _has_signature(item: tuple[str, np.ndarray | None]) -> bool:
  return item[1] is not None


def _band_items(item: tuple[str, np.ndarray], bands: int, rows: int):
  doc_id, sig = item
  return [((band, int(key)), (doc_id, sig)) for band, key in enumerate(band_keys(sig, bands, rows))]


def _as_list(edge):
  return [edge]


def _merge_edge_lists(edge_lists: Iterable[list]) -> list:
  merged = set()
  for edges in edge_lists:
    merged.update(edges)
  return sorted(merged)


def _components(edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
  """(member id, kept id) for every member of a component other than its smallest id."""
  components = _UnionFind()
  for a, b in edges:
    components.union(a, b)
  return [(member, components.find(member)) for member in sorted(components.parent)
          if components.find(member) != member]


def _member_by_kept(joined: tuple[str, dict]):
  doc_id, parts = joined
  return [(kept, (doc_id, sig)) for kept in parts["kept"] for sig in parts["signature"]]


def _decisions_of_component(joined: tuple[str, dict]):
  kept, parts = joined
  return [(member, (kept, estimate_jaccard(sig, kept_sig)))
          for kept_sig in parts["signature"] for member, sig in parts["members"]]


class FuzzyDedup:
  """Global stage: drops near-duplicates, keeping the smallest id of each connected component.

  Feature: the MinHash signature (uint32 [num_permutations]), or None for a text without words
  (never a duplicate). Decision: (kept id, estimated Jaccard with the kept copy).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    """`config` is `config.fuzzy_dedup` (shingle_words, num_permutations, bands, rows, threshold, seed, lowercase)."""
    for key in ("shingle_words", "num_permutations", "bands", "rows"):
      if not isinstance(config[key], int) or config[key] < 1:
        raise ValueError(f"fuzzy_dedup.{key} must be a positive integer, got {config[key]!r}")
    if config.bands * config.rows != config.num_permutations:
      raise ValueError(f"fuzzy_dedup.bands * fuzzy_dedup.rows must equal fuzzy_dedup.num_permutations: "
                       f"{config.bands} * {config.rows} != {config.num_permutations}")
    if not 0.0 < config.threshold <= 1.0:
      raise ValueError(f"fuzzy_dedup.threshold must be in (0, 1], got {config.threshold!r}")
    self.shingle_words = config.shingle_words
    self.num_permutations = config.num_permutations
    self.bands = config.bands
    self.rows = config.rows
    self.threshold = float(config.threshold)
    self.seed = config.seed
    self.lowercase = config.lowercase

  def prepare(self, doc: Document) -> np.ndarray | None:
    """The document's MinHash signature, or None when it has no words."""
    shingles = shingle_hashes(word_hashes(doc.text, self.lowercase), self.shingle_words)
    if len(shingles) == 0:
      return None
    return minhash(shingles, self.num_permutations, self.seed)

  def _check_signature(self, doc_id: str, sig: np.ndarray) -> None:
    if not isinstance(sig, np.ndarray) or sig.shape != (self.num_permutations,):
      raise ValueError(f"fuzzy_dedup: the feature of {doc_id!r} is not a signature of "
                       f"fuzzy_dedup.num_permutations = {self.num_permutations} values: {sig!r:.80}")

  def resolve(self, items: Iterable[tuple[str, np.ndarray | None]]) -> dict[str, tuple[str, float]]:
    """{id: (kept id, estimated Jaccard with it)} for every document that is not kept.

    Args:
      items: (document id, signature or None) pairs from `prepare`, in any order; ids are unique.

    Raises:
      ValueError: an id occurs twice, or a feature is not a signature of this configuration.
    """
    by_id = {}
    for doc_id, sig in items:
      if doc_id in by_id:
        raise ValueError(f"fuzzy_dedup: document id {doc_id!r} occurs twice; ids must be unique")
      if sig is not None:
        self._check_signature(doc_id, sig)
      by_id[doc_id] = sig
    ids = sorted(doc_id for doc_id, sig in by_id.items() if sig is not None)
    if len(ids) < 2:
      return {}
    sigs = np.stack([by_id[doc_id] for doc_id in ids])
    # Components over row indices: ids are sorted, so the smallest index is the smallest id.
    components = _UnionFind()
    distinct, first_with = [], {}
    for index in range(len(ids)):
      first = first_with.setdefault(sigs[index].tobytes(), index)
      if first != index:
        components.union(first, index)
      else:
        distinct.append(index)
    distinct = np.asarray(distinct)
    self._link_candidates(sigs, distinct, components)
    decisions = {}
    for index in range(len(ids)):
      kept = components.find(index)
      if kept != index:
        decisions[ids[index]] = (ids[kept], estimate_jaccard(sigs[index], sigs[kept]))
    return decisions

  def _link_candidates(self, sigs: np.ndarray, distinct: np.ndarray, components: _UnionFind) -> None:
    """Unions every verified candidate pair among the rows `distinct` of `sigs`."""
    keys = band_keys(sigs[distinct], self.bands, self.rows)
    pairs, buckets = [], set()
    for band in range(self.bands):
      order = np.argsort(keys[:, band], kind="stable")
      sorted_keys = keys[order, band]
      starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
      sizes = np.diff(np.append(starts, len(order)))
      twos = starts[sizes == 2]
      pairs.append(np.stack([distinct[order[twos]], distinct[order[twos + 1]]], axis=1))
      for start, size in zip(starts[sizes > 2], sizes[sizes > 2]):
        buckets.add(tuple(distinct[np.sort(order[start:start + size])].tolist()))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    # Pairs in chunks so that the [pairs, P] comparison stays small.
    for start in range(0, len(pairs), 65536):
      chunk = pairs[start:start + 65536]
      equal = np.count_nonzero(sigs[chunk[:, 0]] == sigs[chunk[:, 1]], axis=1)
      for a, b in chunk[_are_duplicates(equal, self.num_permutations, self.threshold)].tolist():
        components.union(a, b)
    for bucket in sorted(buckets):
      roots = {components.find(member) for member in bucket}
      if len(roots) > 1:
        for i, j in link_bucket(sigs[list(bucket)], self.threshold):
          components.union(bucket[i], bucket[j])

  def apply(self, doc: Document, decision: tuple[str, float] | None) -> Document | Drop:
    """The document unchanged, or Drop("near_duplicate") when `decision` names the kept copy."""
    if decision is None:
      return doc
    kept, estimate = decision
    return Drop("near_duplicate", detail=f"of {kept} (J~{estimate:.2f})")

  def beam_resolve(self):
    """PTransform: PCollection[(id, signature | None)] -> PCollection[(id, (kept id, J))], equal to `resolve`."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    bands, rows, threshold = self.bands, self.rows, self.threshold

    class _Resolve(beam.PTransform):

      def expand(self, features):
        signatures = features | "with words" >> beam.Filter(_has_signature)
        kept_of_member = (
            signatures
            | "band keys" >> beam.FlatMap(_band_items, bands, rows)
            | "group bands" >> beam.GroupByKey()
            | "verify buckets" >> beam.FlatMap(_bucket_edges, threshold)
            | "edge lists" >> beam.Map(_as_list)
            | "gather edges" >> beam.CombineGlobally(_merge_edge_lists)
            | "components" >> beam.FlatMap(_components))
        members = ({"signature": signatures, "kept": kept_of_member}
                   | "join members" >> beam.CoGroupByKey()
                   | "key by kept" >> beam.FlatMap(_member_by_kept))
        return ({"signature": signatures, "members": members}
                | "join kept" >> beam.CoGroupByKey()
                | "estimate" >> beam.FlatMap(_decisions_of_component))

    return _Resolve()
