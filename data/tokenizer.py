"""SentencePiece BPE tokenizer: training on a document split, saving, loading.

A tokenizer directory holds ``spm.model`` and ``tokenizer.json`` (vocabulary size and the
special ids). Normalisation is the identity and whitespace is kept as is, so code and
prose round-trip exactly; bytes outside the vocabulary fall back to byte pieces.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Iterable, Iterator

import sentencepiece as spm

from data.corpus import Document

MODEL_FILE = "spm.model"
META_FILE = "tokenizer.json"
# Special ids fixed by construction; recorded in tokenizer.json for readers of the run dir.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
MASK_ID = 4  # the <mask> control piece: the input of corrupted tokens under the masked-LM objective
FIRST_ORDINARY_ID = 5  # the special pieces are below; masked-LM random replacements are drawn from here on


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  processor: spm.SentencePieceProcessor
  bos_id: int
  eos_id: int
  pad_id: int
  mask_id: int | None  # None for a tokenizer directory without a <mask> piece

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS / EOS."""
    return self.processor.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self.processor.decode([int(i) for i in ids])


def _training_lines(documents: Iterable[Document]) -> Iterator[str]:
  # SentencePiece trains on "sentences"; a line is the natural unit for both prose and code.
  for doc in documents:
    for line in doc.text.split("\n"):
      if line.strip():
        yield line


def train(documents: Iterable[Document], vocab_size: int, directory: str, max_sentences: int) -> Tokenizer:
  """Trains a BPE model on `documents` (sampling at most `max_sentences` lines) into `directory`."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_training_lines(documents),
      model_writer=model,
      model_type="bpe",
      vocab_size=vocab_size,
      byte_fallback=True,
      unk_id=UNK_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      pad_id=PAD_ID,
      # Newline is a piece of its own, so line structure costs one token, not a byte fallback.
      control_symbols=["<mask>"],
      user_defined_symbols=["\n"],
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_digits=True,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      max_sentence_length=1 << 16,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
  )
  if spm.SentencePieceProcessor(model_proto=model.getvalue()).piece_to_id("<mask>") != MASK_ID:
    raise RuntimeError(f"the trained tokenizer's <mask> piece is not id {MASK_ID}")
  os.makedirs(directory, exist_ok=True)
  # Write the model first and the metadata last: metadata present means the directory is complete.
  with open(os.path.join(directory, MODEL_FILE), "wb") as f:
    f.write(model.getvalue())
  meta = {"vocab_size": vocab_size, "model_type": "bpe", "byte_fallback": True,
          "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID,
          "mask_id": MASK_ID}
  with open(os.path.join(directory, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  return load(directory)


def exists(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, META_FILE))


def load(directory: str) -> Tokenizer:
  """Loads a tokenizer directory written by `train`."""
  with open(os.path.join(directory, META_FILE)) as f:
    meta = json.load(f)
  processor = spm.SentencePieceProcessor(model_file=os.path.join(directory, MODEL_FILE))
  return Tokenizer(processor, bos_id=meta["bos_id"], eos_id=meta["eos_id"], pad_id=meta["pad_id"],
                   mask_id=meta.get("mask_id"))


def train_or_load(documents: Iterable[Document], vocab_size: int, directory: str, max_sentences: int) -> Tokenizer:
  """Loads the tokenizer in `directory` if one is there (a relaunch), else trains it.

  Raises:
    ValueError: the saved tokenizer's vocabulary size differs from `vocab_size`.
  """
  if not exists(directory):
    return train(documents, vocab_size, directory, max_sentences)
  tokenizer = load(directory)
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(
        f"tokenizer in {directory} has vocab_size {tokenizer.vocab_size} but config model.vocab_size "
        f"is {vocab_size}; use a new train.run_dir or the matching vocab_size")
  return tokenizer
