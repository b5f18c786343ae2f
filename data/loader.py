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
                   shuffle: bool, repeat: bool, pad_id: int = 0) -> grain.IterDataset:
  """Packed rows of `examples` (one dict of [seq_len] int32 arrays per row).

  With `shuffle`, example order is reshuffled every epoch from `seed`; with `repeat`, the
  stream is endless.
  """
  if not examples:
    raise ValueError("no examples to load: the data split (or one of its streams) is empty")
  ds = grain.MapDataset.source(examples)
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


def _stream_seed(seed: int, stream: int) -> int:
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _concatenate_rows(batches: tuple[dict[str, np.ndarray], ...]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def process_streams(num_streams: int, process_index: int, process_count: int) -> range:
  """The packing streams process `process_index` of `process_count` reads: a contiguous block of them."""
  if num_streams % process_count:
    raise ValueError(f"{num_streams} streams cannot be split over {process_count} processes")
  per_process = num_streams // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def deal(items: Sequence, num_streams: int, streams: Iterable[int]) -> dict[int, list]:
  """Item i goes to stream i mod num_streams; returns the items of `streams` only."""
  return {stream: list(items[stream::num_streams]) for stream in streams}


def train_iterator(stream_examples: dict[int, Sequence[dict[str, np.ndarray]]], *, seq_len: int,
                   num_packing_bins: int, seed: int, global_batch_size: int, num_streams: int,
                   pad_id: int) -> grain.DatasetIterator:
  """Endless, shuffled, checkpointable iterator of one process's rows of every global batch.

  Training data is dealt into `num_streams` streams (see `deal`), each shuffled and packed on
  its own. Global batch k is rows k * b .. (k + 1) * b - 1 of stream 0, then of stream 1, ...,
  with b = global_batch_size / num_streams. A process holds the examples of its block of
  streams only (`stream_examples`: stream index -> examples, from `process_streams`) and
  yields their rows of each batch ([b * len(stream_examples), seq_len] int32 arrays), so the
  global batches are the same for any process count that divides num_streams.

  Its position is `get_state()` / `set_state()`, saved in every checkpoint.
  """
  if global_batch_size % num_streams:
    raise ValueError(f"{global_batch_size} rows per batch cannot be split over {num_streams} streams")
  streams = [
      packed_dataset(stream_examples[stream], seq_len=seq_len, num_packing_bins=num_packing_bins,
                     seed=_stream_seed(seed, stream), shuffle=True, repeat=True, pad_id=pad_id)
      .batch(global_batch_size // num_streams, drop_remainder=True)
      for stream in sorted(stream_examples)
  ]
  return iter(grain.experimental.ZipIterDataset(parents=streams).map(_concatenate_rows))


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
