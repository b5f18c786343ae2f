"""Tokenized documents -> packed rows -> batches, as a checkpointable grain pipeline.

Every document becomes ``[BOS] + tokens + [EOS]`` and is cut into examples of at most
``seq_len`` next-token pairs (``inputs`` = ids[:-1], ``targets`` = ids[1:]), so no target
ever crosses a document boundary. Examples are packed first-fit into rows of exactly
``seq_len``; each row carries ``segment_ids`` (1, 2, ... per document, 0 = padding) and
``positions`` (restarting at 0 in each document). A batch is the dict of int32
``[batch, seq]`` arrays every later stage speaks: inputs, targets, segment_ids,
positions, loss_mask.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import grain
import numpy as np

from data.corpus import Document
from data.tokenizer import Tokenizer

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def tokenize(documents: Iterable[Document], tokenizer: Tokenizer, seq_len: int) -> list[dict[str, np.ndarray]]:
  """Examples {"inputs", "targets"} (int32, length <= seq_len) of every document, in order."""
  examples = []
  for doc in documents:
    ids = np.asarray([tokenizer.bos_id] + tokenizer.encode(doc.text) + [tokenizer.eos_id], dtype=np.int32)
    # Windows of seq_len + 1 ids overlapping by one, so every next-token pair is used exactly once.
    for start in range(0, len(ids) - 1, seq_len):
      window = ids[start:start + seq_len + 1]
      examples.append({"inputs": window[:-1], "targets": window[1:]})
  return examples


def _to_batch_fields(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  segment_ids = packed["inputs_segment_ids"].astype(np.int32)
  return {
      "inputs": packed["inputs"].astype(np.int32),
      "targets": packed["targets"].astype(np.int32),
      "segment_ids": segment_ids,
      "positions": packed["inputs_positions"].astype(np.int32),
      "loss_mask": (segment_ids > 0).astype(np.int32),
  }


def packed_dataset(examples: Sequence[dict[str, np.ndarray]], *, seq_len: int, num_packing_bins: int, seed: int,
                   shuffle: bool, repeat: bool, process_index: int = 0, process_count: int = 1,
                   pad_id: int = 0) -> grain.IterDataset:
  """Packed rows of this process's share of `examples` (one dict of [seq_len] int32 arrays per row).

  With `shuffle`, example order is reshuffled every epoch from `seed`; with `repeat`, the
  stream is endless. Process `process_index` of `process_count` reads only every
  `process_count`-th example, so processes never read the same data.
  """
  if not examples:
    raise ValueError("no examples to load: the data split is empty")
  ds = grain.MapDataset.source(examples)[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed)
  if repeat:
    ds = ds.repeat(None)
  packed = grain.experimental.FirstFitPackIterDataset(
      ds.to_iter_dataset(),
      length_struct={"inputs": seq_len, "targets": seq_len},
      num_packing_bins=num_packing_bins,
      seed=seed,
      shuffle_bins=shuffle,
      padding_struct={"inputs": pad_id, "targets": pad_id},
  )
  return packed.map(_to_batch_fields)


def train_iterator(examples, *, seq_len: int, num_packing_bins: int, seed: int, batch_size: int,
                   process_index: int, process_count: int, pad_id: int) -> grain.DatasetIterator:
  """Endless, shuffled, checkpointable iterator of this process's batches ([batch_size, seq_len] int32 arrays).

  Its position is `get_state()` / `set_state()`, saved in every checkpoint.
  """
  ds = packed_dataset(examples, seq_len=seq_len, num_packing_bins=num_packing_bins, seed=seed, shuffle=True,
                      repeat=True, process_index=process_index, process_count=process_count, pad_id=pad_id)
  return iter(ds.batch(batch_size, drop_remainder=True))


def evaluation_rows(examples, *, seq_len: int, num_packing_bins: int, pad_id: int, max_rows: int = 0,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Every example packed once: dict of [rows, seq_len] int32 arrays.

  With `max_rows`, a fixed random sample (from `seed`) of that many rows, so a capped
  evaluation still covers every domain rather than the first documents only.
  """
  ds = packed_dataset(examples, seq_len=seq_len, num_packing_bins=num_packing_bins, seed=0, shuffle=False,
                      repeat=False, pad_id=pad_id)
  rows = list(ds)
  if max_rows and len(rows) > max_rows:
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
    rows = [rows[i] for i in keep]
  return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def evaluation_batches(rows: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Global batches of `rows`; the last is filled with padding rows (loss_mask 0) to `batch_size`."""
  total = len(rows["inputs"])
  for start in range(0, total, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in rows.items()}
    missing = batch_size - len(batch["inputs"])
    if missing:
      batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    yield batch


def unigram_entropy(rows: dict[str, np.ndarray], vocab_size: int) -> float:
  """Entropy (nats / token) of the empirical unigram distribution of the targets under loss_mask.

  The loss a model that ignores all context could reach on these very tokens.
  """
  targets = rows["targets"][rows["loss_mask"] > 0]
  counts = np.bincount(targets, minlength=vocab_size).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())
