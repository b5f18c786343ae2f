"""Token shards -> mixed, packed, shuffled rows -> batches, as a pure function of the step.

Rows. Each document of a source is the ids ``[BOS] + tokens + [EOS]``, i.e. ``n + 1``
next-token pairs. A source's documents, in a seeded order, are laid end to end and cut
every ``seq_len`` pairs; row ``q`` of the source is pairs ``[q * seq_len, (q + 1) * seq_len)``
(the last row is padded). Within a row each document fragment has its own segment id
(1, 2, ...; 0 = padding) and positions restarting at 0, so attention never crosses a
document boundary; there is no padding except at the end of a source.

Mixing. The rows of global batch ``k`` are global rows ``k * B .. k * B + B - 1``. Which
source each row comes from is decided by a binary tree over the sources: at each node a
row goes left iff ``round((g + 1) p) > round(g p)`` where ``p`` is the left subtree's share
and ``g`` the row's index at that node. Every source's count after ``n`` rows is therefore
within a row or two of ``n * weight`` -- exact proportions, not sampled ones -- and it is
computable in closed form for any ``n``. A curriculum is a list of such stages.

Shuffling and epochs. The ``j``-th row a source contributes is row ``j mod R`` of epoch
``j // R`` (R = the source's rows), mapped through a seeded permutation of that epoch
(grain's index_shuffle, never materialised). So a source shown 3x is shown each of its
rows 3 times, in three different orders.

Hence batch ``k`` depends on ``k`` alone: the loader skips to any step without reading the
skipped data, its checkpointed state is just the step, and process ``p`` of ``P`` reads rows
``p * B / P .. (p + 1) * B / P - 1`` of each batch, for any process count dividing B.

A batch is the dict of int32 ``[batch, seq]`` arrays every later stage speaks: inputs,
targets, segment_ids, positions, loss_mask.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Iterator, Sequence

import grain
import numpy as np

from data.shards import SplitTokens

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


class MixtureError(ValueError):
  """A mixture the configured sources cannot realise; the message names the config key."""


@functools.lru_cache(maxsize=4096)
def _seed(*parts: int | str) -> int:
  words = [int.from_bytes(p.encode()[:16].ljust(16, b"\0"), "little") if isinstance(p, str) else int(p)
           for p in parts]
  return int(np.random.SeedSequence(words).generate_state(1)[0])


# --- rows of one source --------------------------------------------------------------------------------------------

class SourceRows:
  """The rows of one source's split, read by row number.

  `shuffle_seed` None keeps the documents in shard order (evaluation); otherwise they are laid
  out in a seeded permutation fixed for the run.
  """

  def __init__(self, tokens: SplitTokens, seq_len: int, pad_id: int, shuffle_seed: int | None):
    if tokens.num_documents == 0:
      raise MixtureError(f"source {tokens.source!r} has no {tokens.split} documents")
    self.tokens, self.seq_len, self.pad_id = tokens, seq_len, pad_id
    order = np.arange(tokens.num_documents)
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(tokens.num_documents)
    self.order = order
    pairs = tokens.lengths[order] - 1  # a document of m ids gives m - 1 next-token pairs
    self.pair_starts = np.concatenate([[0], np.cumsum(pairs)]).astype(np.int64)
    self.num_pairs = int(self.pair_starts[-1])
    self.num_rows = -(-self.num_pairs // seq_len)

  def row(self, q: int) -> dict[str, np.ndarray]:
    """Row `q` (0 <= q < num_rows): dict of int32 [seq_len] arrays, BATCH_KEYS."""
    seq_len = self.seq_len
    start, stop = q * seq_len, min((q + 1) * seq_len, self.num_pairs)
    out = {k: np.zeros(seq_len, np.int32) for k in BATCH_KEYS}
    out["inputs"][:] = out["targets"][:] = self.pad_id
    k = int(np.searchsorted(self.pair_starts, start, side="right")) - 1
    filled, segment = 0, 0
    while start + filled < stop:
      doc_start = int(self.pair_starts[k])
      a = start + filled - doc_start  # first pair of this document in the row
      b = min(int(self.pair_starts[k + 1]), stop) - doc_start
      if b > a:
        ids = self.tokens.read(int(self.order[k]), a, b + 1)
        n = b - a
        segment += 1
        out["inputs"][filled:filled + n] = ids[:-1]
        out["targets"][filled:filled + n] = ids[1:]
        out["segment_ids"][filled:filled + n] = segment
        out["positions"][filled:filled + n] = np.arange(n, dtype=np.int32)
        out["loss_mask"][filled:filled + n] = 1
        filled += n
      k += 1
    return out


# --- the mixture ---------------------------------------------------------------------------------------------------

def _split(weights: np.ndarray, members: np.ndarray) -> tuple[int, float]:
  """A tree node over `members`: (size of its left half, the left half's share of the node's weight)."""
  half = len(members) // 2
  left_w, right_w = weights[members[:half]].sum(), weights[members[half:]].sum()
  return half, (left_w / (left_w + right_w) if left_w + right_w > 0 else 0.0)


def allocate(weights: Sequence[float], g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(source, index within that source) of the rows `g` (int64 [n], 0-based) of a stage with `weights`."""
  weights = np.asarray(weights, np.float64)
  g = np.asarray(g, np.int64)
  source = np.zeros(len(g), np.int64)
  index = g.copy()
  _allocate(weights, np.arange(len(weights)), np.arange(len(g)), index, source)
  return source, index


def _allocate(weights, members, rows, index, source) -> None:
  if len(members) == 1 or len(rows) == 0:
    source[rows] = members[0]
    return
  half, p = _split(weights, members)
  g = index[rows]
  before = np.floor(g * p + 0.5).astype(np.int64)  # rows of the left subtree among the first g
  goes_left = np.floor((g + 1) * p + 0.5).astype(np.int64) > before
  index[rows] = np.where(goes_left, before, g - before)
  _allocate(weights, members[:half], rows[goes_left], index, source)
  _allocate(weights, members[half:], rows[~goes_left], index, source)


def counts(weights: Sequence[float], n: int) -> np.ndarray:
  """int64 [sources]: how many of the first `n` rows of a stage with `weights` each source gets."""
  weights = np.asarray(weights, np.float64)
  out = np.zeros(len(weights), np.int64)
  _counts(weights, np.arange(len(weights)), int(n), out)
  return out


def _counts(weights, members, n, out) -> None:
  if len(members) == 1:
    out[members[0]] += n
    return
  half, p = _split(weights, members)
  left = int(math.floor(n * p + 0.5))
  _counts(weights, members[:half], left, out)
  _counts(weights, members[half:], n - left, out)


def stage_index(starts: Sequence[int], step: int) -> int:
  """The stage of `step` among stages starting at the increasing `starts` (starts[0] == 0)."""
  return int(np.searchsorted(np.asarray(starts), step, side="right")) - 1


@dataclasses.dataclass(frozen=True)
class Mixture:
  """Per-stage source weights: stage i runs from step starts[i] to starts[i + 1] (the last one forever)."""

  names: tuple[str, ...]
  starts: tuple[int, ...]  # first step of each stage; starts[0] == 0
  weights: np.ndarray  # float64 [stages, sources], each row summing to 1

  def stage_of(self, step: int) -> int:
    return stage_index(self.starts, step)


def _weight_pairs(pairs, key: str, names: Sequence[str]) -> dict[str, float]:
  out = {}
  for item in pairs:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
      raise MixtureError(f"{key}: expected (source, weight) pairs, got {item!r}")
    name, weight = item
    if name not in names:
      raise MixtureError(f"{key} names source {name!r}, which the tokens do not have (sources: {', '.join(names)})")
    if name in out:
      raise MixtureError(f"{key} names source {name!r} twice")
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
      raise MixtureError(f"{key}: the weight of {name!r} must be a finite number >= 0, got {weight!r}")
    out[name] = float(weight)
  if out and sum(out.values()) <= 0:
    raise MixtureError(f"{key}: the weights are all zero")
  return out


def build_mixture(names: Sequence[str], source_pairs: dict[str, int], source_rows: dict[str, int], *,
                  mixture=(), temperature: float = 1.0, epochs=(), curriculum=(), total_steps: int,
                  global_batch_size: int, replay_sources=(), replay_fraction: float = 0.5) -> Mixture:
  """The stages of `data.mixture`, `data.mixture_temperature`, `data.mixture_epochs` and `data.curriculum`,
  with `data.replay_sources` taking `data.replay_fraction` of every stage's rows (see `_with_replay`).

  names: the sources of the tokens directory, sorted. source_pairs / source_rows: training
    next-token pairs and rows of each.
  Raises:
    MixtureError: naming the config key and the source.
  """
  names = tuple(names)
  if not isinstance(temperature, (int, float)) or not temperature > 0:
    raise MixtureError(f"data.mixture_temperature must be > 0, got {temperature!r}")
  base = _weight_pairs(mixture, "data.mixture", names)
  if base and temperature != 1.0:
    raise MixtureError("data.mixture_temperature applies to size-proportional mixing only; with explicit "
                       "data.mixture weights leave it at 1.0")
  fixed = {}
  for item in epochs:
    if not isinstance(item, (tuple, list)) or len(item) != 2 or item[0] not in names:
      raise MixtureError(f"data.mixture_epochs: expected (source, epochs) with a source of {names}, got {item!r}")
    if not isinstance(item[1], (int, float)) or not item[1] > 0:
      raise MixtureError(f"data.mixture_epochs: epochs of {item[0]!r} must be > 0, got {item[1]!r}")
    total_rows = total_steps * global_batch_size
    fixed[item[0]] = item[1] * source_rows[item[0]] / total_rows
  if sum(fixed.values()) >= 1.0:
    raise MixtureError(f"data.mixture_epochs take {sum(fixed.values()):.1%} of the run's rows; the other sources "
                       "need some: lower the epochs or raise train.steps")
  if not base:  # size-proportional, flattened by the temperature
    empty = [n for n in names if source_rows[n] == 0]
    if empty:
      raise MixtureError(f"source {empty[0]!r} has no training documents; give data.mixture weights that leave "
                         "it out (weight 0) or re-tokenize with it")
    base = {n: float(source_pairs[n]) ** (1.0 / temperature) for n in names if n not in fixed}
  stages = [(0, base, "data.mixture")]
  last = 0
  for i, item in enumerate(curriculum):
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], int):
      raise MixtureError(f"data.curriculum[{i}]: expected (step, ((source, weight), ...)), got {item!r}")
    if item[0] <= last:
      raise MixtureError(f"data.curriculum[{i}]: stage steps must increase from 1 on, got {item[0]} after {last}")
    last = item[0]
    stages.append((item[0], _weight_pairs(item[1], f"data.curriculum[{i}]", names), f"data.curriculum[{i}]"))
  rows = []
  for _, weights, key in stages:
    both = sorted(set(weights) & set(fixed))
    if both:
      raise MixtureError(f"{key} gives a weight to {both}, whose share data.mixture_epochs fixes")
    for name, weight in weights.items():
      if weight > 0 and source_rows[name] == 0:
        raise MixtureError(f"{key}: source {name!r} has no training documents")
    free = sum(weights.values())
    if free <= 0:
      raise MixtureError(f"{key}: the weights are all zero")
    row = np.array([fixed[n] if n in fixed else (1.0 - sum(fixed.values())) * weights.get(n, 0.0) / free
                    for n in names])
    rows.append(row / row.sum())
  if replay_sources:
    if fixed:
      raise MixtureError("data.replay_sources and data.mixture_epochs both fix shares; give the replay share one way")
    sizes = np.array([float(source_pairs[n]) for n in names])
    rows = [_with_replay(row, names, sizes, replay_sources, replay_fraction, key)
            for row, (_, _, key) in zip(rows, stages)]
  return Mixture(names, tuple(s for s, _, _ in stages), np.stack(rows))


def _with_replay(row: np.ndarray, names: tuple[str, ...], sizes: np.ndarray, replay_sources, fraction: float,
                 key: str) -> np.ndarray:
  """`row` (weights over `names`) rescaled so that `replay_sources` hold `fraction` of it and the other (new-domain)
  sources the rest. Within each group the shares follow `row`, or the sources' sizes where `row` gives the group
  nothing (so that a mixture naming only the new domain still replays the original at `fraction`)."""
  unknown = [n for n in replay_sources if n not in names]
  if unknown:
    raise MixtureError(f"data.replay_sources names {unknown[0]!r}, which the tokens do not have (sources: "
                       f"{', '.join(names)})")
  if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
    raise MixtureError(f"data.replay_fraction must be in [0, 1], got {fraction!r}")
  taken = sorted({"original", "new"} & set(names))
  if taken:  # their eval/NAME/loss keys would be those of the domain aggregates
    raise MixtureError(f"data.replay_sources: a source named {taken[0]!r} clashes with the eval/{taken[0]}/loss "
                       "aggregate of replay runs; rename the source when writing the shards")
  replay = np.array([n in replay_sources for n in names])
  out = np.zeros_like(row)
  for group, share, what in ((replay, fraction, "data.replay_sources"),
                             (~replay, 1.0 - fraction, "the new-domain sources (those not in data.replay_sources)")):
    if share == 0:
      continue
    weights = row[group] if row[group].sum() > 0 else sizes[group]
    if weights.sum() <= 0:
      raise MixtureError(f"{key} with data.replay_fraction {fraction}: {what} have no training rows to give "
                         f"{share:.0%} of the batch")
    out[group] = share * weights / weights.sum()
  return out


# --- the stream of batches -----------------------------------------------------------------------------------------

class Stream:
  """Global batches of a mixture of sources as a pure function of the step (see the module docstring)."""

  def __init__(self, splits: dict[str, SplitTokens], mixture: Mixture, *, seq_len: int, global_batch_size: int,
               seed: int, pad_id: int):
    self.mixture, self.seq_len, self.global_batch_size, self.seed = mixture, seq_len, global_batch_size, seed
    self.sources = [SourceRows(splits[name], seq_len, pad_id, _seed(seed, name)) if name in splits
                    and splits[name].num_documents else None for name in mixture.names]
    for name, rows, w in zip(mixture.names, self.sources, mixture.weights.max(axis=0)):
      if rows is None and w > 0:
        raise MixtureError(f"source {name!r} has weight {w:.3g} but no training documents")
    # Rows each source has given before each stage starts: stage i's own counts start from these.
    before = [np.zeros(len(mixture.names), np.int64)]
    for i in range(1, len(mixture.starts)):
      rows = (mixture.starts[i] - mixture.starts[i - 1]) * global_batch_size
      before.append(before[-1] + counts(mixture.weights[i - 1], rows))
    self._before = before

  @property
  def names(self) -> tuple[str, ...]:
    return self.mixture.names

  def num_rows(self, source: int) -> int:
    rows = self.sources[source]
    return 0 if rows is None else rows.num_rows

  def consumed(self, step: int) -> np.ndarray:
    """int64 [sources]: rows each source gave to batches 0 .. step - 1."""
    stage = self.mixture.stage_of(step)
    rows = (step - self.mixture.starts[stage]) * self.global_batch_size
    return self._before[stage] + counts(self.mixture.weights[stage], rows)

  def assignment(self, step: int, first_row: int, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, row of that source) of rows first_row .. first_row + num_rows - 1 of batch `step`."""
    stage = self.mixture.stage_of(step)
    g = (step - self.mixture.starts[stage]) * self.global_batch_size + first_row + np.arange(num_rows)
    source, index = allocate(self.mixture.weights[stage], g)
    return source, index + self._before[stage][source]

  def row(self, source: int, j: int) -> dict[str, np.ndarray]:
    """The `j`-th row source `source` contributes: epoch j // R, in that epoch's seeded order."""
    rows = self.sources[source]
    epoch, r = divmod(int(j), rows.num_rows)
    seed = _seed(self.seed, self.names[source], epoch) & 0x7FFFFFFF
    q = grain.experimental.index_shuffle(r, rows.num_rows - 1, seed, 4) if rows.num_rows > 1 else 0
    return rows.row(int(q))

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    """Process `process_index`'s rows of global batch `step`: dict of int32 [B / process_count, seq_len]."""
    per_process = self.global_batch_size // process_count
    source, j = self.assignment(step, process_index * per_process, per_process)
    rows = [self.row(int(s), int(i)) for s, i in zip(source, j)]
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}

  def fingerprint(self) -> dict:
    """What the batches depend on besides the step; stored with the loader state."""
    return {"sources": list(self.names), "starts": list(self.mixture.starts),
            "weights": [[round(float(w), 12) for w in row] for row in self.mixture.weights],
            "rows": [self.num_rows(i) for i in range(len(self.names))], "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size, "seed": self.seed}

  def report(self, step: int) -> dict[str, dict[str, float]]:
    """Per source, over batches 0 .. step - 1: share of rows, epochs (passes over its rows), rows."""
    used = self.consumed(step)
    total = max(int(used.sum()), 1)
    return {name: {"share": int(used[i]) / total,
                   "epochs": int(used[i]) / self.num_rows(i) if self.num_rows(i) else 0.0, "rows": int(used[i])}
            for i, name in enumerate(self.names)}

  def plan_table(self, total_steps: int) -> str:
    """The mixture of the whole run: per source its rows, configured share per stage and epochs at the end."""
    report = self.report(total_steps)
    stage_heads = "".join(f" {'w@' + str(s):>8}" for s in self.mixture.starts)
    lines = [f"{'source':<16} {'rows':>10}{stage_heads} {'share':>7} {'epochs':>7}"]
    for i, name in enumerate(self.names):
      weights = "".join(f" {w:>8.3f}" for w in self.mixture.weights[:, i])
      lines.append(f"{name:<16} {self.num_rows(i):>10,}{weights} {report[name]['share']:>7.3f} "
                   f"{report[name]['epochs']:>7.2f}")
    return "\n".join(lines)


def make_stream(train_splits: dict[str, SplitTokens], *, seq_len: int, global_batch_size: int, seed: int, pad_id: int,
                total_steps: int, mixture=(), temperature: float = 1.0, epochs=(), curriculum=(), replay_sources=(),
                replay_fraction: float = 0.5) -> Stream:
  """The Stream of the training splits of every source under the mixture settings (see `build_mixture`)."""
  names = tuple(sorted(train_splits))
  pairs = {name: int((train_splits[name].lengths - 1).sum()) for name in names}
  mix = build_mixture(names, pairs, {name: -(-n // seq_len) for name, n in pairs.items()}, mixture=mixture,
                      temperature=temperature, epochs=epochs, curriculum=curriculum, total_steps=total_steps,
                      global_batch_size=global_batch_size, replay_sources=replay_sources,
                      replay_fraction=replay_fraction)
  return Stream(train_splits, mix, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed, pad_id=pad_id)


class StagedStream:
  """Context stages: the batches of steps starts[k] .. starts[k + 1] - 1 are those of streams[k], a Stream of the
  same sources and mixture packed at its own row length (with fewer rows per batch, so tokens per step stay).

  Each stage's stream is indexed by the run's step, as if it had run from step 0: its rows start where a run at
  that length would be by then, so no stage re-reads another stage's positions in its own order. Documents shown
  in an earlier stage may be shown again, packed at the new length.
  """

  def __init__(self, streams: Sequence[Stream], starts: Sequence[int]):
    if len(streams) != len(starts) or starts[0] != 0 or list(starts) != sorted(set(starts)):
      raise ValueError(f"stage starts {list(starts)} must begin at 0 and increase, one per stream")
    self.streams, self.starts = list(streams), tuple(int(s) for s in starts)
    self.global_batch_size = math.gcd(*(s.global_batch_size for s in streams))  # divides every stage's rows

  @property
  def names(self) -> tuple[str, ...]:
    return self.streams[0].names

  def stage_of(self, step: int) -> int:
    return stage_index(self.starts, step)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    return self.streams[self.stage_of(step)].batch(step, process_index, process_count)

  def fingerprint(self) -> dict:
    return {"stages": [s.fingerprint() for s in self.streams], "starts": list(self.starts)}

  def report(self, step: int) -> dict[str, dict[str, float]]:
    """As `Stream.report`, summed over the stages run before `step`: share of tokens, epochs, rows."""
    rows = np.zeros(len(self.names), np.int64)
    tokens = np.zeros(len(self.names), np.float64)
    epochs = np.zeros(len(self.names), np.float64)
    for k, stream in enumerate(self.streams):
      end = min(step, self.starts[k + 1] if k + 1 < len(self.starts) else step)
      if end <= self.starts[k]:
        continue
      used = stream.consumed(end) - stream.consumed(self.starts[k])
      rows += used
      tokens += used * stream.seq_len
      epochs += [used[i] / stream.num_rows(i) if stream.num_rows(i) else 0.0 for i in range(len(self.names))]
    total = max(float(tokens.sum()), 1.0)
    return {name: {"share": float(tokens[i]) / total, "epochs": float(epochs[i]), "rows": int(rows[i])}
            for i, name in enumerate(self.names)}

  def plan_table(self, total_steps: int) -> str:
    ends = list(self.starts[1:]) + [total_steps]
    parts = [f"stage from step {start} to {end}: rows of {stream.seq_len} ids, {stream.global_batch_size} per batch\n"
             + stream.plan_table(total_steps) for start, end, stream in zip(self.starts, ends, self.streams)]
    report = self.report(total_steps)
    parts.append("whole run (share of tokens, epochs): " + ", ".join(
        f"{name} {e['share']:.3f} / {e['epochs']:.2f}" for name, e in report.items()))
    return "\n".join(parts)


def _batch_of_step(stream: Stream, process_index: int, process_count: int, step: int) -> dict[str, np.ndarray]:
  return stream.batch(step, process_index, process_count)


class TrainIterator:
  """This process's training batches from a step on, read ahead by a grain pipeline.

  `num_workers` > 0 reads in that many grain worker processes, otherwise in threads of this
  process; either way the batches are the same. Its state (`state()` / `restore()`, also the
  bytes of `get_state()` / `set_state()`) is the next step and the stream's fingerprint;
  restoring rebuilds the pipeline at that step without reading the batches before it.
  """

  def __init__(self, stream: Stream, *, step: int = 0, process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, prefetch: int = 2):
    if stream.global_batch_size % process_count:
      raise ValueError(f"{stream.global_batch_size} rows per batch cannot be split over {process_count} processes")
    self.stream, self.process_index, self.process_count = stream, process_index, process_count
    self.num_workers, self.prefetch = num_workers, prefetch
    self.step = step
    self._iterator = None  # built on the first batch, so a restore right after construction reads nothing twice

  def _start(self) -> None:
    step = self.step
    # Endless for any practical purpose; MapDataset needs a length.
    ds = grain.MapDataset.range(step, step + (1 << 40)).map(
        functools.partial(_batch_of_step, self.stream, self.process_index, self.process_count))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(self.prefetch, 1), prefetch_buffer_size=self.prefetch))
    if self.num_workers > 0:
      from absl import flags  # pylint: disable=import-outside-toplevel
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a caller outside absl.app has not parsed them
        flags.FLAGS.mark_as_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
    self._iterator = iter(it)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    self.step += 1
    return batch

  def state(self) -> dict:
    return {"step": self.step, "stream": self.stream.fingerprint()}

  def restore(self, state: dict) -> None:
    """Moves to the saved step. A different fingerprint (another mixture, batch size, seed) is an error."""
    saved, current = state.get("stream"), self.stream.fingerprint()
    if saved != current:
      changed = sorted(k for k in current if saved is None or saved.get(k) != current[k])
      raise ValueError(f"the checkpoint's data stream differs from this run's in {', '.join(changed)}: the saved "
                       "position would not continue the same data")
    self.step, self._iterator = int(state["step"]), None

  def get_state(self) -> bytes:
    return json.dumps(self.state()).encode()

  def set_state(self, state: bytes) -> None:
    self.restore(json.loads(state))

  def start_prefetch(self) -> None:
    """Part of the interface grain's checkpoint handler expects; reading starts on the first batch."""

  def close(self) -> None:
    self._iterator = None


# --- evaluation ----------------------------------------------------------------------------------------------------

def evaluation_rows(tokens: SplitTokens, *, seq_len: int, pad_id: int, max_rows: int = 0,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Every row of a split (documents in shard order): dict of [rows, seq_len] int32 arrays.

  With `max_rows`, a fixed random sample (from `seed`) of that many rows, so a capped
  evaluation still covers the whole split rather than its first documents only.
  """
  rows = SourceRows(tokens, seq_len, pad_id, shuffle_seed=None)
  keep = np.arange(rows.num_rows)
  if max_rows and rows.num_rows > max_rows:
    keep = np.sort(np.random.default_rng(seed).choice(rows.num_rows, size=max_rows, replace=False))
  out = [rows.row(int(q)) for q in keep]
  return {k: np.stack([r[k] for r in out]) for k in BATCH_KEYS}


def concatenate_rows(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([p[k] for p in parts]) for k in BATCH_KEYS}


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
  counts_ = np.bincount(targets, minlength=vocab_size).astype(np.float64)
  p = counts_[counts_ > 0] / counts_.sum()
  return float(-(p * np.log(p)).sum())
