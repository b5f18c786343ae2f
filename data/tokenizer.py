"""SentencePiece tokenizer: training on sampled lines, saving, loading, and the fertility report.

A tokenizer directory holds ``spm.model``, ``tokenizer.json`` (the settings it was trained
with, the special pieces and ids, and the sha256 of ``spm.model``) and, when trained by the
command line, ``fertility.json``. Normalisation is the identity and whitespace is kept as
is, so code and prose round-trip exactly; with byte fallback, characters outside the
vocabulary become UTF-8 byte pieces, never <unk>.

    python -m data.tokenizer --config configs/tokenize/NAME.py [--config.tokenizer.FIELD=VALUE ...]

The command reads the documents of ``config.inputs`` once, as a stream, and groups them by
their ``source``. Per source it holds out ``tokenizer.fertility_documents`` documents (those
whose seeded hash of the id is smallest, and never more than half of the source's
documents) and keeps a seeded uniform sample of at most ``tokenizer.sentences_per_source``
non-empty lines of the other documents. Every source thus gives the same number of training
lines, whatever its size, unless it has fewer. The tokenizer is trained on the union of the
samples and measured on the held-out documents: tokens per word, bytes per token and the
share of byte-fallback tokens, per source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import io
import json
import os
import random
import re
import sys
import time
from typing import Callable, Iterable, Iterator, Mapping

import sentencepiece as spm

from data.corpus import Document

MODEL_FILE = "spm.model"
META_FILE = "tokenizer.json"
FERTILITY_FILE = "fertility.json"
# Special ids fixed by construction; recorded in tokenizer.json for readers of the run dir.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
MASK_ID = 4  # the <mask> control piece: the input of corrupted tokens under the masked-LM objective
FIRST_ORDINARY_ID = 5  # the special pieces are below; masked-LM random replacements are drawn from here on
UNK_PIECE = "<unk>"
MASK_PIECE = "<mask>"
MODEL_TYPES = ("bpe", "unigram")
NUM_BYTE_PIECES = 256  # <0x00> ... <0xFF>, present when byte_fallback is on
_PROGRESS_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  processor: spm.SentencePieceProcessor
  bos_id: int
  eos_id: int
  pad_id: int
  mask_id: int | None  # None for a tokenizer directory without a <mask> piece
  # Hex sha256 of the spm.model bytes it was loaded from ('' when not loaded from a directory).
  sha256: str = dataclasses.field(default="", compare=False)

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS / EOS."""
    return self.processor.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self.processor.decode([int(i) for i in ids])


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a tokenizer is trained with; the fields of ``config.tokenizer`` that shape the model.

  The defaults are those of `train` (the tokenizer a training run makes for itself).
  Construction validates every field and raises ValueError naming its config key.
  """
  vocab_size: int  # pieces in the vocabulary, special, user-defined and byte pieces included
  model_type: str = "bpe"  # bpe | unigram
  byte_fallback: bool = True  # characters outside the vocabulary become UTF-8 byte pieces
  split_digits: bool = True  # every digit is a piece of its own
  bos_piece: str = "<s>"  # control piece of id BOS_ID
  eos_piece: str = "</s>"  # control piece of id EOS_ID
  pad_piece: str = "<pad>"  # control piece of id PAD_ID
  user_defined_symbols: tuple[str, ...] = ("\n",)  # pieces always kept whole, ids after <mask>

  def __post_init__(self):
    if isinstance(self.user_defined_symbols, str) or not isinstance(self.user_defined_symbols, (tuple, list)):
      raise ValueError(f"tokenizer.user_defined_symbols must be a tuple of strings, got "
                       f"{self.user_defined_symbols!r}")
    object.__setattr__(self, "user_defined_symbols", tuple(self.user_defined_symbols))
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"tokenizer.model_type must be 'bpe' or 'unigram', got {self.model_type!r}")
    for key in ("byte_fallback", "split_digits"):
      if not isinstance(getattr(self, key), bool):
        raise ValueError(f"tokenizer.{key} must be True or False, got {getattr(self, key)!r}")
    specials = {"bos_piece": self.bos_piece, "eos_piece": self.eos_piece, "pad_piece": self.pad_piece}
    for key, piece in specials.items():
      if not isinstance(piece, str) or not piece:
        raise ValueError(f"tokenizer.{key} must be a non-empty string, got {piece!r}")
    for symbol in self.user_defined_symbols:
      if not isinstance(symbol, str) or not symbol:
        raise ValueError(f"tokenizer.user_defined_symbols must hold non-empty strings, got {symbol!r}")
    # SentencePiece refuses a piece defined twice; name both keys here rather than echo its internal error.
    owners = {UNK_PIECE: "the <unk> piece", MASK_PIECE: "the <mask> piece"}
    for key, piece in [*(("tokenizer." + k, p) for k, p in specials.items()),
                       *(("tokenizer.user_defined_symbols", s) for s in self.user_defined_symbols)]:
      if piece in owners:
        raise ValueError(f"{key} {piece!r} is already {owners[piece]}; special pieces must be distinct")
      owners[piece] = key
    if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int):
      raise ValueError(f"tokenizer.vocab_size must be an integer, got {self.vocab_size!r}")
    if self.vocab_size <= self.fixed_pieces:
      raise ValueError(
          f"tokenizer.vocab_size {self.vocab_size} is too small: the special, user-defined"
          f"{' and byte' if self.byte_fallback else ''} pieces alone take {self.fixed_pieces}")

  @property
  def fixed_pieces(self) -> int:
    """Pieces present whatever the training text: <unk>, BOS, EOS, pad, <mask>, user-defined and byte pieces."""
    return 5 + len(self.user_defined_symbols) + (NUM_BYTE_PIECES if self.byte_fallback else 0)

  @classmethod
  def from_config(cls, tok) -> Settings:
    """The settings of a ``config.tokenizer`` ConfigDict (configs/tokenize/base.py)."""
    return cls(vocab_size=tok.vocab_size, model_type=tok.model_type, byte_fallback=tok.byte_fallback,
               split_digits=tok.split_digits, bos_piece=tok.bos_piece, eos_piece=tok.eos_piece,
               pad_piece=tok.pad_piece, user_defined_symbols=tok.user_defined_symbols)


def train(documents: Iterable[Document], vocab_size: int, directory: str, max_sentences: int,
          seed: int) -> Tokenizer:
  """Trains a BPE model with the default `Settings` on `documents` into `directory`.

  The model is trained on a seeded uniform sample of at most `max_sentences` of the documents'
  non-empty lines (a line is the natural unit of both prose and code), so the same documents and
  seed give the same tokenizer. SentencePiece's own sampling (input_sentence_size) is unseeded.
  """
  sampler = _SourceSampler("", max_sentences, max_held_out=0, seed=seed)
  for doc in documents:
    sampler.add(doc)
  return _train(iter(sampler.finish().sampled), Settings(vocab_size=vocab_size), directory)


def train_lines(lines: Iterable[str], settings: Settings, directory: str) -> Tokenizer:
  """Trains a model on every one of `lines` (already sampled, e.g. by `sample_lines`) into `directory`.

  Raises:
    ValueError: `settings.vocab_size` does not suit the lines (too small for their characters, or more
      pieces than a unigram model can make of them); the message names tokenizer.vocab_size.
  """
  return _train(iter(lines), settings, directory)


def _train(lines: Iterator[str], settings: Settings, directory: str) -> Tokenizer:
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_writer=model,
        model_type=settings.model_type,
        vocab_size=settings.vocab_size,
        byte_fallback=settings.byte_fallback,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        unk_piece=UNK_PIECE,
        bos_piece=settings.bos_piece,
        eos_piece=settings.eos_piece,
        pad_piece=settings.pad_piece,
        control_symbols=[MASK_PIECE],
        # Newline (by default) is a piece of its own, so line structure costs one token, not a byte fallback.
        user_defined_symbols=list(settings.user_defined_symbols),
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=settings.split_digits,
        # The lines arrive sampled with a seed; SentencePiece's own sampling is unseeded.
        input_sentence_size=0,
        max_sentence_length=1 << 16,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
  except RuntimeError as e:
    raise _vocab_size_error(str(e), settings.vocab_size) from None
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  if processor.piece_to_id(MASK_PIECE) != MASK_ID:
    raise RuntimeError(f"the trained tokenizer's <mask> piece is not id {MASK_ID}")
  os.makedirs(directory, exist_ok=True)
  # Metadata present means the directory is complete: remove it (and the report of the old model) first,
  # write the model, and the metadata last.
  for name in (META_FILE, FERTILITY_FILE):
    if os.path.exists(os.path.join(directory, name)):
      os.remove(os.path.join(directory, name))
  with open(os.path.join(directory, MODEL_FILE), "wb") as f:
    f.write(model.getvalue())
  meta = {
      "vocab_size": settings.vocab_size, "model_type": settings.model_type,
      "byte_fallback": settings.byte_fallback, "split_digits": settings.split_digits,
      "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID, "mask_id": MASK_ID,
      "unk_piece": UNK_PIECE, "bos_piece": settings.bos_piece, "eos_piece": settings.eos_piece,
      "pad_piece": settings.pad_piece, "mask_piece": MASK_PIECE,
      "user_defined_symbols": list(settings.user_defined_symbols),
      "sha256": hashlib.sha256(model.getvalue()).hexdigest(),
  }
  with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2, ensure_ascii=False)
  return load(directory)


def _vocab_size_error(message: str, vocab_size: int) -> Exception:
  """SentencePiece's refusals of a vocabulary size, as ValueErrors naming the config key; others unchanged."""
  if match := re.search(r"required_chars\. (\d+) vs (\d+)", message):
    return ValueError(f"tokenizer.vocab_size {vocab_size} is too small for the training lines: their characters "
                      f"and the fixed pieces need {match.group(2)}")
  if match := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
    return ValueError(f"tokenizer.vocab_size {vocab_size} is too large for the training lines: a unigram model "
                      f"of them has at most {match.group(2)} pieces (lower it or sample more lines)")
  return RuntimeError(message)


def exists(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, META_FILE))


def model_hash(directory: str) -> str:
  """Hex sha256 of the directory's spm.model bytes: what a token shard records to refuse another tokenizer."""
  with open(os.path.join(directory, MODEL_FILE), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def load(directory: str) -> Tokenizer:
  """Loads a tokenizer directory written by `train` or `train_lines`.

  Raises:
    ValueError: tokenizer.json records another spm.model than the one in the directory.
  """
  with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
    meta = json.load(f)
  with open(os.path.join(directory, MODEL_FILE), "rb") as f:
    model = f.read()
  digest = hashlib.sha256(model).hexdigest()
  # Directories written before the hash was recorded have none to compare.
  if meta.get("sha256", digest) != digest:
    raise ValueError(f"{os.path.join(directory, MODEL_FILE)} is not the model {META_FILE} describes "
                     f"(sha256 {digest}, recorded {meta['sha256']}); retrain the tokenizer")
  processor = spm.SentencePieceProcessor(model_proto=model)
  return Tokenizer(processor, bos_id=meta["bos_id"], eos_id=meta["eos_id"], pad_id=meta["pad_id"],
                   mask_id=meta.get("mask_id"), sha256=digest)


def train_or_load(documents: Iterable[Document], vocab_size: int, directory: str, max_sentences: int,
                  seed: int) -> Tokenizer:
  """Loads the tokenizer in `directory` if one is there (a relaunch), else trains it.

  Raises:
    ValueError: the saved tokenizer's vocabulary size differs from `vocab_size`.
  """
  if not exists(directory):
    return train(documents, vocab_size, directory, max_sentences, seed)
  tokenizer = load(directory)
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(
        f"tokenizer in {directory} has vocab_size {tokenizer.vocab_size} but config model.vocab_size "
        f"is {vocab_size}; use a new train.run_dir or the matching vocab_size")
  return tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Even sampling across sources.


@dataclasses.dataclass
class SourceSample:
  """What one source gave to the sample."""
  documents: int  # documents of the source read
  lines: int  # non-empty lines of its documents outside the held-out ones: the population of `sampled`
  sampled: list[str]  # training lines, a uniform sample of `lines`, in random order
  held_out: list[Document]  # documents kept out of `sampled` to measure fertility on, by hash order


@dataclasses.dataclass
class Sample:
  """The result of `sample_lines`."""
  sources: dict[str, SourceSample]  # by source name, sorted
  skipped: dict[str, int]  # documents of sources left out by `sources`, by source name
  seconds: float  # time spent reading

  def lines(self) -> Iterator[str]:
    """Every source's sampled lines, source after source."""
    for source in self.sources.values():
      yield from source.sampled

  def held_out(self) -> dict[str, list[Document]]:
    return {name: source.held_out for name, source in self.sources.items()}


def _document_key(doc_id: str, seed: int) -> int:
  # The hash of corpus.in_validation: a function of the id alone, so the held-out set ignores corpus order.
  return int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "little")


class _SourceSampler:
  """Streams one source's documents into a held-out set and a uniform line sample.

  The held-out documents are the `max_held_out` of smallest id hash seen so far; a document
  pushed out of that set by a smaller hash gives its lines to the sample then. The line
  sample keeps the `max_lines` lines of smallest random priority, which is a uniform sample
  of every line offered whatever the order they come in.
  """

  def __init__(self, name: str, max_lines: int, max_held_out: int, seed: int):
    self.max_lines, self.max_held_out, self.seed = max_lines, max_held_out, seed
    self.rng = random.Random(f"{seed}:{name}")  # str seeds hash deterministically, unlike hash(str)
    self.lines_heap: list[tuple[float, str]] = []  # (-priority, line): the root is the largest kept priority
    self.held_heap: list[tuple[int, int, Document]] = []  # (-key, arrival, doc): the root is the largest kept key
    self.documents = 0
    self.lines = 0

  def add(self, doc: Document) -> None:
    self.documents += 1
    if self.max_held_out:
      entry = (-_document_key(doc.id, self.seed), self.documents, doc)
      if len(self.held_heap) < self.max_held_out:
        heapq.heappush(self.held_heap, entry)
        return
      if entry[0] > self.held_heap[0][0]:
        doc = heapq.heapreplace(self.held_heap, entry)[2]
    self._add_lines(doc)

  def _add_lines(self, doc: Document) -> None:
    heap, random_ = self.lines_heap, self.rng.random
    for line in doc.text.split("\n"):
      if not line.strip():
        continue
      self.lines += 1
      priority = random_()
      if len(heap) < self.max_lines:
        heapq.heappush(heap, (-priority, line))
      elif priority < -heap[0][0]:
        heapq.heapreplace(heap, (-priority, line))

  def finish(self) -> SourceSample:
    # A source small enough to be held out whole would train nothing: at most half of it is held out.
    while len(self.held_heap) > self.documents // 2:
      self._add_lines(heapq.heappop(self.held_heap)[2])
    held_out = [doc for _, _, doc in sorted(self.held_heap, reverse=True)]
    sampled = [line for _, line in sorted(self.lines_heap, reverse=True)]
    return SourceSample(documents=self.documents, lines=self.lines, sampled=sampled, held_out=held_out)


def sample_lines(documents: Iterable[Document], sentences_per_source: int, fertility_documents: int, seed: int,
                 sources: Iterable[str] = (), log: Callable[[str], None] | None = None) -> Sample:
  """Reads `documents` once and samples training lines evenly across their sources (see module docstring).

  Args:
    documents: any stream of documents; only the samples and held-out documents are kept in memory.
    sentences_per_source: non-empty lines kept per source, at most.
    fertility_documents: documents held out per source (at most half of the source's).
    seed: seed of the held-out choice and of the line sample.
    sources: source names to keep, others are skipped and counted; empty = every source.
    log: called with a progress line every few seconds while reading.

  Raises:
    ValueError: a name of `sources` has no document, no documents at all, or a source has no
      non-empty line outside its held-out documents.
  """
  keep = frozenset(sources)
  samplers: dict[str, _SourceSampler] = {}
  skipped: dict[str, int] = {}
  start = last = time.time()
  for count, doc in enumerate(documents, start=1):
    if keep and doc.source not in keep:
      skipped[doc.source] = skipped.get(doc.source, 0) + 1
    else:
      if doc.source not in samplers:
        samplers[doc.source] = _SourceSampler(doc.source, sentences_per_source, fertility_documents, seed)
      samplers[doc.source].add(doc)
    if log and time.time() - last >= _PROGRESS_SECONDS:
      last = time.time()
      log(f"read {count} documents ({count / (last - start):.0f} documents/s)")
  if missing := sorted(keep - samplers.keys()):
    found = ", ".join(sorted(samplers.keys() | skipped.keys())) or "none"
    raise ValueError(f"sources names {', '.join(map(repr, missing))}, which no input document has "
                     f"(sources found: {found})")
  if not samplers:
    raise ValueError("the inputs hold no documents")
  result = Sample({name: samplers[name].finish() for name in sorted(samplers)}, dict(sorted(skipped.items())),
                  time.time() - start)
  for name, source in result.sources.items():
    if not source.sampled:
      raise ValueError(f"source {name!r} has no non-empty line to train on ({source.documents} documents, "
                       f"{len(source.held_out)} held out for the fertility report)")
  return result


# ---------------------------------------------------------------------------------------------------------------------
# Fertility report.


def _fertility_row(documents: int, words: int, num_bytes: int, tokens: int, byte_tokens: int) -> dict:
  return {
      "documents": documents, "words": words, "bytes": num_bytes, "tokens": tokens,
      "byte_fallback_tokens": byte_tokens,
      "tokens_per_word": tokens / words if words else None,
      "bytes_per_token": num_bytes / tokens if tokens else None,
      "byte_fallback_share": byte_tokens / tokens if tokens else None,
  }


def fertility(tokenizer: Tokenizer, documents_by_source: Mapping[str, Iterable[Document]]) -> dict:
  """How many tokens `tokenizer` spends on each source's documents.

  Words are whitespace-separated (``len(text.split())``), bytes are UTF-8 bytes, tokens are
  ids without BOS / EOS; byte-fallback tokens are the <0xNN> pieces.

  Returns:
    ``{"sha256": str, "vocab_size": int, "sources": {name: row}, "all": row}``, a row being
    ``{"documents", "words", "bytes", "tokens", "byte_fallback_tokens": int, "tokens_per_word",
    "bytes_per_token", "byte_fallback_share": float, or None when its denominator is 0}``.
  """
  processor = tokenizer.processor
  byte_ids = frozenset(i for i in range(processor.get_piece_size()) if processor.is_byte(i))
  rows, totals = {}, [0, 0, 0, 0, 0]
  for name, documents in documents_by_source.items():
    counts = [0, 0, 0, 0, 0]  # documents, words, bytes, tokens, byte-fallback tokens
    for doc in documents:
      ids = processor.encode(doc.text)
      counts[0] += 1
      counts[1] += len(doc.text.split())
      counts[2] += len(doc.text.encode("utf-8"))
      counts[3] += len(ids)
      counts[4] += sum(1 for i in ids if i in byte_ids)
    rows[name] = _fertility_row(*counts)
    totals = [t + c for t, c in zip(totals, counts)]
  return {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size, "sources": rows,
          "all": _fertility_row(*totals)}


def format_fertility(report: dict) -> str:
  """The report of `fertility` as an aligned table, one row per source and an "all" row."""
  header = ("source", "docs", "words", "tokens", "tokens/word", "bytes/token", "byte-fallback %")

  def number(value, spec):
    return "-" if value is None else format(value, spec)

  table = [header]
  for name, row in [*report["sources"].items(), ("all", report["all"])]:
    share = None if row["byte_fallback_share"] is None else 100 * row["byte_fallback_share"]
    table.append((name, str(row["documents"]), str(row["words"]), str(row["tokens"]),
                  number(row["tokens_per_word"], ".3f"), number(row["bytes_per_token"], ".3f"), number(share, ".3f")))
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                   for r in table)


# ---------------------------------------------------------------------------------------------------------------------
# Command line.


def _paths(config, key: str) -> tuple[str, ...]:
  value = config[key]
  if isinstance(value, str):  # one name given without the tuple around it
    return (value,)
  if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{key} must be a tuple of strings, got {value!r}")
  return tuple(value)


def check_config(config) -> Settings:
  """The training settings of a configs/tokenize config, after checking the fields the command reads.

  Raises:
    ValueError: a field is out of range; the message names its key.
  """
  settings = Settings.from_config(config.tokenizer)
  if not _paths(config, "inputs"):
    raise ValueError("inputs is empty: name at least one document path ('' = the embedded corpus)")
  _paths(config, "sources")
  tok = config.tokenizer
  if not isinstance(tok.sentences_per_source, int) or tok.sentences_per_source < 1:
    raise ValueError(f"tokenizer.sentences_per_source must be a positive integer, got {tok.sentences_per_source!r}")
  if not isinstance(tok.fertility_documents, int) or tok.fertility_documents < 0:
    raise ValueError(f"tokenizer.fertility_documents must be a non-negative integer, got "
                     f"{tok.fertility_documents!r}")
  if not tok.output_dir:
    raise ValueError("tokenizer.output_dir is empty")
  return settings


def _documents(inputs: Iterable[str]) -> Iterator[Document]:
  from data import corpus  # pylint: disable=import-outside-toplevel
  for path in inputs:
    yield from corpus.embedded_documents() if not path else corpus.user_documents(path)


def run(config, log: Callable[[str], None] = print) -> dict:
  """Samples the inputs of `config` (configs/tokenize/base.py), trains the tokenizer and measures it.

  Writes spm.model, tokenizer.json and fertility.json (the report of `fertility` plus
  ``"sample"``: per source, documents read, candidate lines, sampled lines and held-out
  documents) to ``config.tokenizer.output_dir``.

  Returns:
    The contents of fertility.json.

  Raises:
    ValueError, FileNotFoundError: a bad config field or an unusable input; the message names it.
  """
  settings = check_config(config)
  tok = config.tokenizer
  inputs = _paths(config, "inputs")
  log(f"reading {', '.join(repr(p) if p else '<embedded corpus>' for p in inputs)}")
  sample = sample_lines(_documents(inputs), tok.sentences_per_source, tok.fertility_documents, tok.seed,
                        sources=_paths(config, "sources"), log=log)
  read = sum(s.documents for s in sample.sources.values()) + sum(sample.skipped.values())
  skipped = "".join(f"; skipped {n} of source {name!r}" for name, n in sample.skipped.items())
  log(f"read {read} documents in {sample.seconds:.1f}s ({read / max(sample.seconds, 1e-9):.0f} documents/s){skipped}")
  stats = {name: {"documents": s.documents, "lines": s.lines, "sampled_lines": len(s.sampled),
                  "held_out_documents": len(s.held_out)} for name, s in sample.sources.items()}
  table = [("source", "documents", "lines", "sampled", "held out")]
  table += [(name, *(str(v) for v in s.values())) for name, s in stats.items()]
  widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
  for r in table:
    log("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
  total_lines = sum(len(s.sampled) for s in sample.sources.values())
  log(f"training a {settings.model_type} tokenizer of {settings.vocab_size} pieces on {total_lines} lines")
  start = time.time()
  tokenizer = train_lines(sample.lines(), settings, tok.output_dir)
  log(f"trained in {time.time() - start:.1f}s; fertility on the held-out documents:")
  report = fertility(tokenizer, sample.held_out())
  report["sample"] = stats
  with open(os.path.join(tok.output_dir, FERTILITY_FILE), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  log(format_fertility(report))
  log(f"written to {tok.output_dir}: {MODEL_FILE}, {META_FILE}, {FERTILITY_FILE} (sha256 {tokenizer.sha256})")
  return report


def main(argv) -> None:
  """`python -m data.tokenizer`: flag --config (a configs/tokenize config file)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(flags.FLAGS.config, log=lambda line: print(line, flush=True))
  except (ValueError, FileNotFoundError) as e:  # config errors and unusable inputs, named by key and path
    message = " ".join(str(e).splitlines())  # one line, whatever the error
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app as absl_app  # pylint: disable=ungrouped-imports
  from absl import flags as absl_flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Path to a tokenizer config (configs/tokenize/NAME.py).",
                                  lock_config=True)
  absl_flags.mark_flags_as_required(["config"])
  absl_app.run(main)
