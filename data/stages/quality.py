"""Heuristic quality stages: the Gopher, C4 and FineWeb rule sets.

* `GopherQuality` and `GopherRepetition`: the MassiveText quality and repetition filters
  (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", appendix A and Table A1).
* `C4Filter`: the line and page rules that built C4 (Raffel et al. 2020, "Exploring the
  Limits of Transfer Learning with a Unified Text-to-Text Transformer", section 2.2); the
  1000-character word limit and the citation markers come from the released C4 builder of
  TensorFlow Datasets.
* `FineWebFilter`: the three rules FineWeb added on top of C4 and Gopher (Penedo et al. 2024,
  "The FineWeb Datasets") plus the newline-per-word ratio of its released filter.

Thresholds are read from the config (`gopher_quality`, `gopher_repetition`, `c4`, `fineweb`),
whose defaults are the published values. Each stage checks its rules in a fixed order,
documented on the class, and the first rule that fails drops the document with that rule's
reason key. Every statistic is computed in one or a few linear passes over the text, so the
stages stay cheap on every document of a crawl.

Shared definitions:

* *words*: whitespace-separated tokens with surrounding punctuation stripped; tokens that are
  only punctuation (a lone "-" or "...") are not words.
* *lines*: the text split on newlines, each stripped of surrounding whitespace; blank lines
  are not lines.
* *paragraphs*: the text split on blank lines, each stripped; empty pieces are not paragraphs.
* a line (paragraph) is a *duplicate* when it equals an earlier line (paragraph) of the
  document; the first occurrence is not a duplicate.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from data.corpus import Document
from data.stages import Drop

# ASCII punctuation plus the typographic marks that web text uses in their place.
PUNCTUATION = string.punctuation + "“”‘’«»‹›„‚–—―‐‑…·•¡¿§¶†‡′″"
# Characters that open a bulleted line: ASCII list markers and the common bullet glyphs.
BULLETS = ("•", "‣", "◦", "⁃", "●", "○", "■", "□", "▪", "▫",
           "►", "▶", "➢", "→", "-", "*", "–", "—", "·")
ELLIPSES = ("...", "…")
_LETTER = re.compile(r"[^\W\d_]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def words_of(text: str) -> list[str]:
  """The words of `text` (whitespace tokens with surrounding punctuation stripped, empty ones removed)."""
  return [word for word in (token.strip(PUNCTUATION) for token in text.split()) if word]


def lines_of(text: str) -> list[str]:
  """The non-blank lines of `text`, each stripped of surrounding whitespace."""
  return [line for line in (raw.strip() for raw in text.split("\n")) if line]


def paragraphs_of(text: str) -> list[str]:
  """The paragraphs of `text` (split on blank lines), each stripped; empty pieces removed."""
  return [p for p in (piece.strip() for piece in _PARAGRAPH_BREAK.split(text)) if p]


def duplicates(items: Iterable[str]) -> tuple[int, int, int]:
  """(duplicate items, characters in duplicate items, characters in all items) of a sequence of strings.

  An item is a duplicate when it equals an earlier item, so the first occurrence is not counted.
  """
  seen = set()
  duplicate_count = duplicate_chars = total_chars = 0
  for item in items:
    total_chars += len(item)
    if item in seen:
      duplicate_count += 1
      duplicate_chars += len(item)
    else:
      seen.add(item)
  return duplicate_count, duplicate_chars, total_chars


def _fmt(value: float) -> str:
  return f"{value:.3g}"


def _number(config: ml_collections.ConfigDict, section: str, key: str, kind: type = float) -> Any:
  """`config[key]` converted to `kind`; a clear error naming `section.key` when it is not a number."""
  value = config[key]
  try:
    if isinstance(value, bool) or (kind is int and float(value) != int(value)):
      raise ValueError
    return kind(value)
  except (TypeError, ValueError):
    expected = "an integer" if kind is int else "a number"
    raise ValueError(f"{section}.{key}: expected {expected}, got {value!r}") from None


def _ngram_limits(config: ml_collections.ConfigDict, key: str) -> tuple[tuple[int, float], ...]:
  """`gopher_repetition[key]` as ((n, limit), ...) with n >= 1; ValueError naming the key otherwise."""
  pairs = []
  for item in config[key]:
    try:
      n, limit = item
      if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError
      pairs.append((int(n), float(limit)))
    except (TypeError, ValueError):
      raise ValueError(f"gopher_repetition.{key}: expected (n, limit) pairs with an integer n >= 1, got "
                       f"{item!r}") from None
  return tuple(pairs)


def _with_edits(doc: Document, text: str, edits: dict[str, int]) -> Document:
  """`doc` with `text`, its `metadata["edits"]` incremented by `edits` (counts by kind)."""
  if not edits:  # only whitespace changed
    return dataclasses.replace(doc, text=text)
  metadata = dict(doc.metadata)
  merged = collections.Counter(metadata.get("edits", {}))
  merged.update(edits)
  metadata["edits"] = dict(merged)
  return dataclasses.replace(doc, text=text, metadata=metadata)


class GopherQuality:
  """The Gopher quality filter (Rae et al. 2021, Table A1), thresholds from `config.gopher_quality`.

  Rules, checked in this order (reason key: what drops):
    word_count: fewer than `min_words` or more than `max_words` words.
    mean_word_length: mean word length outside [`min_mean_word_length`, `max_mean_word_length`].
    symbol_word_ratio: '#' per word, or ellipses ('...' or '…') per word, above `max_symbol_word_ratio`
      (each symbol on its own, as the paper states "for either the hash symbol or the ellipsis").
    bullet_lines: fraction of lines starting with a bullet above `max_bullet_lines_ratio`.
    ellipsis_lines: fraction of lines ending with an ellipsis above `max_ellipsis_lines_ratio`.
    alpha_words: fraction of words containing a letter below `min_alpha_words_ratio`.
    stop_words: fewer than `min_stop_words` distinct `stop_words` among the lowercased words.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    section = "gopher_quality"
    self.min_words = _number(config, section, "min_words", int)
    self.max_words = _number(config, section, "max_words", int)
    self.min_mean_word_length = _number(config, section, "min_mean_word_length")
    self.max_mean_word_length = _number(config, section, "max_mean_word_length")
    self.max_symbol_word_ratio = _number(config, section, "max_symbol_word_ratio")
    self.max_bullet_lines_ratio = _number(config, section, "max_bullet_lines_ratio")
    self.max_ellipsis_lines_ratio = _number(config, section, "max_ellipsis_lines_ratio")
    self.min_alpha_words_ratio = _number(config, section, "min_alpha_words_ratio")
    if isinstance(config.stop_words, str):
      raise ValueError(f"{section}.stop_words: expected a sequence of words, got the string {config.stop_words!r}")
    self.stop_words = frozenset(word.lower() for word in config.stop_words)
    self.min_stop_words = _number(config, section, "min_stop_words", int)

  def __call__(self, doc: Document) -> Document | Drop:
    text = doc.text
    words = words_of(text)
    num_words = len(words)
    if num_words == 0:
      return Drop("word_count", "no words")
    if num_words < self.min_words:
      return Drop("word_count", f"{num_words} < {self.min_words}")
    if num_words > self.max_words:
      return Drop("word_count", f"{num_words} > {self.max_words}")

    mean_length = sum(map(len, words)) / num_words
    if mean_length < self.min_mean_word_length:
      return Drop("mean_word_length", f"{_fmt(mean_length)} < {_fmt(self.min_mean_word_length)}")
    if mean_length > self.max_mean_word_length:
      return Drop("mean_word_length", f"{_fmt(mean_length)} > {_fmt(self.max_mean_word_length)}")

    hash_ratio = text.count("#") / num_words
    if hash_ratio > self.max_symbol_word_ratio:
      return Drop("symbol_word_ratio", f"'#' {_fmt(hash_ratio)} > {_fmt(self.max_symbol_word_ratio)}")
    ellipsis_ratio = (text.count("...") + text.count("…")) / num_words
    if ellipsis_ratio > self.max_symbol_word_ratio:
      return Drop("symbol_word_ratio", f"ellipsis {_fmt(ellipsis_ratio)} > {_fmt(self.max_symbol_word_ratio)}")

    lines = lines_of(text)  # not empty: there are words
    bullet_ratio = sum(1 for line in lines if line.startswith(BULLETS)) / len(lines)
    if bullet_ratio > self.max_bullet_lines_ratio:
      return Drop("bullet_lines", f"{_fmt(bullet_ratio)} > {_fmt(self.max_bullet_lines_ratio)}")
    ellipsis_lines_ratio = sum(1 for line in lines if line.endswith(ELLIPSES)) / len(lines)
    if ellipsis_lines_ratio > self.max_ellipsis_lines_ratio:
      return Drop("ellipsis_lines", f"{_fmt(ellipsis_lines_ratio)} > {_fmt(self.max_ellipsis_lines_ratio)}")

    alpha_ratio = sum(1 for word in words if _LETTER.search(word)) / num_words
    if alpha_ratio < self.min_alpha_words_ratio:
      return Drop("alpha_words", f"{_fmt(alpha_ratio)} < {_fmt(self.min_alpha_words_ratio)}")

    found = len(self.stop_words.intersection(map(str.lower, words)))
    if found < self.min_stop_words:
      return Drop("stop_words", f"{found} < {self.min_stop_words}")
    return doc


class _NGrams:
  """Exact word n-gram ids of one document, built incrementally: n-gram ids from (n-1)-gram ids.

  The (n-1)-gram id at position i and the word id at i+n-1 identify the n-gram at i; `np.unique`
  renumbers those pairs densely, so each order costs one sort of at most len(words) integers and
  no n-gram is ever materialised as a tuple of strings.
  """

  def __init__(self, words: Sequence[str]):
    vocab: dict[str, int] = {}
    self.word_ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
    self.vocab_size = max(len(vocab), 1)
    self.word_chars = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    self.total_chars = int(self.word_chars.sum())
    self._char_prefix = np.concatenate([[0], np.cumsum(self.word_chars)])
    self._ids = {1: self.word_ids}

  def ids(self, n: int) -> np.ndarray:
    """int64[len(words) - n + 1]: dense ids, equal exactly where the n-grams are equal."""
    top = max(self._ids)
    while top < n:
      previous = self._ids[top]
      if len(previous) <= 1:
        self._ids[top + 1] = np.zeros(0, dtype=np.int64)
      else:
        pairs = previous[:-1] * self.vocab_size + self.word_ids[top:]
        self._ids[top + 1] = np.unique(pairs, return_inverse=True)[1].reshape(-1).astype(np.int64)
      top += 1
    return self._ids[n]

  def chars(self, n: int) -> np.ndarray:
    """int64[len(words) - n + 1]: the word characters of the n-gram starting at each position."""
    return self._char_prefix[n:] - self._char_prefix[:-n]

  def top_chars_ratio(self, n: int) -> float:
    """Characters of the most frequent n-gram times its count, over all word characters.

    Only an n-gram that occurs more than once counts (a single occurrence is no repetition);
    among equally frequent n-grams the one with the most characters is taken. Overlapping
    occurrences all count, so the ratio can exceed 1 for a run of one repeated word.
    """
    ids = self.ids(n)
    if len(ids) == 0 or self.total_chars == 0:
      return 0.0
    counts = np.bincount(ids)
    top_count = int(counts.max())
    if top_count < 2:
      return 0.0
    top_chars = int(self.chars(n)[counts[ids] == top_count].max())
    return top_count * top_chars / self.total_chars

  def duplicate_chars_ratio(self, n: int) -> float:
    """Characters of the words covered by any n-gram occurring more than once, over all word characters.

    Each word is counted once however many repeated n-grams cover it.
    """
    ids = self.ids(n)
    if len(ids) == 0 or self.total_chars == 0:
      return 0.0
    repeated_start = (np.bincount(ids)[ids] > 1).astype(np.int64)
    # A word is covered when a repeated n-gram starts at one of the n positions ending at it.
    covered = np.convolve(repeated_start, np.ones(n, dtype=np.int64))[:len(self.word_ids)] > 0
    return int(self.word_chars[covered].sum()) / self.total_chars


class GopherRepetition:
  """The Gopher repetition filter (Rae et al. 2021, Table A1), thresholds from `config.gopher_repetition`.

  Rules, checked in this order (reason key: what drops):
    duplicate_lines: duplicate lines / lines above `max_duplicate_lines_ratio`.
    duplicate_paragraphs: duplicate paragraphs / paragraphs above `max_duplicate_paragraphs_ratio`.
    duplicate_line_chars: characters of duplicate lines / characters of all lines above
      `max_duplicate_line_chars_ratio`.
    duplicate_paragraph_chars: the same for paragraphs, limit `max_duplicate_paragraph_chars_ratio`.
    top_{n}gram, for each (n, limit) of `top_ngram_max_chars_ratio` in order: the characters of the most
      frequent word n-gram times its count, over all word characters, above `limit` (n-grams occurring
      once are ignored; see `_NGrams.top_chars_ratio`).
    duplicate_{n}gram, for each (n, limit) of `duplicate_ngram_max_chars_ratio` in order: the characters
      of the words covered by any n-gram occurring more than once, each word counted once, over all
      word characters, above `limit`.
  N-grams are built from the lowercased words; characters of words exclude whitespace and the
  stripped punctuation. A document without lines has nothing repeated and is kept.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    section = "gopher_repetition"
    self.max_duplicate_lines_ratio = _number(config, section, "max_duplicate_lines_ratio")
    self.max_duplicate_paragraphs_ratio = _number(config, section, "max_duplicate_paragraphs_ratio")
    self.max_duplicate_line_chars_ratio = _number(config, section, "max_duplicate_line_chars_ratio")
    self.max_duplicate_paragraph_chars_ratio = _number(config, section, "max_duplicate_paragraph_chars_ratio")
    self.top_ngram_limits = _ngram_limits(config, "top_ngram_max_chars_ratio")
    self.duplicate_ngram_limits = _ngram_limits(config, "duplicate_ngram_max_chars_ratio")

  def __call__(self, doc: Document) -> Document | Drop:
    text = doc.text
    lines = lines_of(text)
    if not lines:
      return doc
    paragraphs = paragraphs_of(text)
    duplicate_lines, duplicate_line_chars, line_chars = duplicates(lines)
    duplicate_paragraphs, duplicate_paragraph_chars, paragraph_chars = duplicates(paragraphs)

    ratio = duplicate_lines / len(lines)
    if ratio > self.max_duplicate_lines_ratio:
      return Drop("duplicate_lines", f"{_fmt(ratio)} > {_fmt(self.max_duplicate_lines_ratio)}")
    ratio = duplicate_paragraphs / len(paragraphs)
    if ratio > self.max_duplicate_paragraphs_ratio:
      return Drop("duplicate_paragraphs", f"{_fmt(ratio)} > {_fmt(self.max_duplicate_paragraphs_ratio)}")
    ratio = duplicate_line_chars / line_chars
    if ratio > self.max_duplicate_line_chars_ratio:
      return Drop("duplicate_line_chars", f"{_fmt(ratio)} > {_fmt(self.max_duplicate_line_chars_ratio)}")
    ratio = duplicate_paragraph_chars / paragraph_chars
    if ratio > self.max_duplicate_paragraph_chars_ratio:
      return Drop("duplicate_paragraph_chars", f"{_fmt(ratio)} > {_fmt(self.max_duplicate_paragraph_chars_ratio)}")

    ngrams = _NGrams([word.lower() for word in words_of(text)])
    for n, limit in self.top_ngram_limits:
      ratio = ngrams.top_chars_ratio(n)
      if ratio > limit:
        return Drop(f"top_{n}gram", f"{_fmt(ratio)} > {_fmt(limit)}")
    for n, limit in self.duplicate_ngram_limits:
      ratio = ngrams.duplicate_chars_ratio(n)
      if ratio > limit:
        return Drop(f"duplicate_{n}gram", f"{_fmt(ratio)} > {_fmt(limit)}")
    return doc


# Wikipedia-style citation markers: "[1]", "[12, 13]", "[4–6]", "[edit]", "[citation needed]".
_CITATION = re.compile(r"\[(?:\d+(?:\s*[,–-]\s*\d+)*|edit|citation needed)\]", re.IGNORECASE)
# A sentence end inside a line: terminal punctuation, optional closing quotes / brackets, then space.
_INNER_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s")


class C4Filter:
  """The C4 rules (Raffel et al. 2020, section 2.2), thresholds from `config.c4`.

  Line rules, applied to every stripped line after its citation markers are removed
  (`remove_citations`, edit "c4_citation" per marker); the first that matches removes the line,
  counted in `metadata["edits"]` under its key:
    c4_no_end_punctuation: the line does not end with one of `end_punctuation`.
    c4_too_few_words: fewer than `min_words_per_line` whitespace-separated words.
    c4_long_word: a word longer than `max_word_length` characters.
    c4_javascript: the line mentions "javascript" (any case; with `remove_javascript_lines`).
    c4_policy: the line contains one of `policy_phrases` (any case).
  Blank lines are kept as single paragraph breaks between kept lines.

  Document rules on the kept text, in this order (reason key: what drops):
    no_text: every line was removed.
    lorem_ipsum: it contains "lorem ipsum" (any case; with `drop_lorem_ipsum`).
    curly_bracket: it contains "{" (with `drop_curly_bracket`).
    too_few_sentences: fewer than `min_sentences` sentences. Sentences are counted without a
      sentence splitter: each kept line ends one (it ends in punctuation), plus every '.', '!' or '?'
      run inside a line that is followed by whitespace, which over-counts abbreviations such as "e.g.".
  """

  def __init__(self, config: ml_collections.ConfigDict):
    section = "c4"
    if isinstance(config.end_punctuation, str) or not config.end_punctuation:
      raise ValueError(f"{section}.end_punctuation: expected a non-empty sequence of strings, got "
                       f"{config.end_punctuation!r}")
    self.end_punctuation = tuple(config.end_punctuation)
    self.min_words_per_line = _number(config, section, "min_words_per_line", int)
    self.max_word_length = _number(config, section, "max_word_length", int)
    self.min_sentences = _number(config, section, "min_sentences", int)
    self.remove_javascript_lines = bool(config.remove_javascript_lines)
    if isinstance(config.policy_phrases, str):
      raise ValueError(f"{section}.policy_phrases: expected a sequence of phrases, got the string "
                       f"{config.policy_phrases!r}")
    self.policy_phrases = tuple(phrase.lower() for phrase in config.policy_phrases)
    self.drop_lorem_ipsum = bool(config.drop_lorem_ipsum)
    self.drop_curly_bracket = bool(config.drop_curly_bracket)
    self.remove_citations = bool(config.remove_citations)

  def _line_removal(self, line: str) -> str | None:
    """The edit key that removes the (stripped, non-empty) `line`, or None when it is kept."""
    if not line.endswith(self.end_punctuation):
      return "c4_no_end_punctuation"
    words = line.split()
    if len(words) < self.min_words_per_line:
      return "c4_too_few_words"
    if max(map(len, words)) > self.max_word_length:
      return "c4_long_word"
    lowered = line.lower()
    if self.remove_javascript_lines and "javascript" in lowered:
      return "c4_javascript"
    if any(phrase in lowered for phrase in self.policy_phrases):
      return "c4_policy"
    return None

  def __call__(self, doc: Document) -> Document | Drop:
    edits: collections.Counter[str] = collections.Counter()
    kept: list[str] = []  # kept lines, with "" for a paragraph break
    sentences = 0
    for raw_line in doc.text.split("\n"):
      line = raw_line.strip()
      if line and self.remove_citations:
        line, removed = _CITATION.subn("", line)
        if removed:
          edits["c4_citation"] += removed
          line = line.strip()
      if not line:
        if kept and kept[-1]:
          kept.append("")
        continue
      removal = self._line_removal(line)
      if removal is not None:
        edits[removal] += 1
        continue
      kept.append(line)
      sentences += 1 + len(_INNER_SENTENCE_END.findall(line))

    text = "\n".join(kept).strip("\n")
    if not text:
      return Drop("no_text", "every line removed")
    lowered = text.lower()
    if self.drop_lorem_ipsum and "lorem ipsum" in lowered:
      return Drop("lorem_ipsum")
    if self.drop_curly_bracket and "{" in text:
      return Drop("curly_bracket")
    if sentences < self.min_sentences:
      return Drop("too_few_sentences", f"{sentences} < {self.min_sentences}")
    if not edits and text == doc.text:
      return doc
    return _with_edits(doc, text, edits)


class FineWebFilter:
  """The FineWeb rules (Penedo et al. 2024), thresholds from `config.fineweb`.

  Rules, checked in this order (reason key: what drops):
    no_text: the document has no non-blank line.
    punctuated_lines: fraction of lines ending with one of `end_punctuation` below `min_punctuated_lines_ratio`.
    short_lines: fraction of lines of at most `short_line_chars` characters above `max_short_lines_ratio`.
    duplicate_line_chars: characters of duplicate lines / characters of all lines above
      `max_duplicate_line_chars_ratio`.
    newlines_per_word: line breaks per whitespace-separated word above `max_newlines_per_word`. Line
      breaks are counted between non-blank lines, so a run of blank lines (a paragraph break) counts
      once: the rule targets text broken into one-word lines, not paragraphs.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    section = "fineweb"
    self.min_punctuated_lines_ratio = _number(config, section, "min_punctuated_lines_ratio")
    self.max_short_lines_ratio = _number(config, section, "max_short_lines_ratio")
    self.short_line_chars = _number(config, section, "short_line_chars", int)
    self.max_duplicate_line_chars_ratio = _number(config, section, "max_duplicate_line_chars_ratio")
    self.max_newlines_per_word = _number(config, section, "max_newlines_per_word")
    if isinstance(config.end_punctuation, str) or not config.end_punctuation:
      raise ValueError(f"{section}.end_punctuation: expected a non-empty sequence of strings, got "
                       f"{config.end_punctuation!r}")
    self.end_punctuation = tuple(config.end_punctuation)

  def __call__(self, doc: Document) -> Document | Drop:
    lines = lines_of(doc.text)
    if not lines:
      return Drop("no_text")
    ratio = sum(1 for line in lines if line.endswith(self.end_punctuation)) / len(lines)
    if ratio < self.min_punctuated_lines_ratio:
      return Drop("punctuated_lines", f"{_fmt(ratio)} < {_fmt(self.min_punctuated_lines_ratio)}")
    ratio = sum(1 for line in lines if len(line) <= self.short_line_chars) / len(lines)
    if ratio > self.max_short_lines_ratio:
      return Drop("short_lines", f"{_fmt(ratio)} > {_fmt(self.max_short_lines_ratio)}")
    _, duplicate_chars, total_chars = duplicates(lines)
    ratio = duplicate_chars / total_chars
    if ratio > self.max_duplicate_line_chars_ratio:
      return Drop("duplicate_line_chars", f"{_fmt(ratio)} > {_fmt(self.max_duplicate_line_chars_ratio)}")
    ratio = (len(lines) - 1) / len(doc.text.split())
    if ratio > self.max_newlines_per_word:
      return Drop("newlines_per_word", f"{_fmt(ratio)} > {_fmt(self.max_newlines_per_word)}")
    return doc
