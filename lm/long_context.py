"""Long-context evaluation: loss as a function of position, and a retrieval probe.

Loss by position reads long documents one per row from their first token, so position p of
the row is position p of the document, and averages each position bucket's next-token loss.
A model that uses its context gets better (lower loss) further in; one evaluated past the
length it was trained at usually gets worse there instead.

The retrieval probe hides a key in filler text ("The secret number is 48213.") at a chosen
depth of a context of a chosen length, and ends the context with the question ("What is the
secret number? The secret number is"). A trial is correct when greedy decoding continues with
the key exactly (each key token is the argmax given the context and the key's earlier tokens);
the key's log-likelihood is reported as well, since small models rarely get it exact, against a
control: the same haystack with another key planted, so the gain (key log-likelihood minus the
control's) is what the model took from the planted key.

    python -m lm.evaluate --run RUN_DIR --task position_loss --data TOKENS_DIR --seq_len 1024 --bucket 128
    python -m lm.evaluate --run RUN_DIR --task retrieval --data TOKENS_DIR --lengths 256,512,1024 --depths 0,0.5,1
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from data import loader
from lm import evaluate as evaluate_lib

NEEDLE = "\nThe secret number is {key}. Remember it.\n"
QUESTION = "\nWhat is the secret number? The secret number is"


def long_document_rows(splits: Sequence[Any], seq_len: int, max_documents: int) -> dict[str, np.ndarray]:
  """One row per document of at least seq_len + 1 ids: its first seq_len + 1 ids as inputs and targets.

  Args:
    splits: `data.shards.SplitTokens` to read from, in order (documents taken in shard order).
    max_documents: at most this many rows (0 = every long enough document).
  Returns:
    BATCH_KEYS -> [documents, seq_len] int32 (positions 0..seq_len-1, one segment, every target scored).
  Raises:
    ValueError: no document is long enough (names the length and the longest found).
  """
  chosen, longest = [], 0
  for split in splits:
    for document in np.flatnonzero(split.lengths >= seq_len + 1):
      chosen.append(split.read(int(document), 0, seq_len + 1))
      if max_documents and len(chosen) == max_documents:
        break
    longest = max(longest, int(split.lengths.max(initial=0)))
    if max_documents and len(chosen) == max_documents:
      break
  if not chosen:
    raise ValueError(f"no document has {seq_len + 1} ids for rows of {seq_len} (the longest has {longest})")
  ids = np.stack(chosen).astype(np.int32)
  rows = len(ids)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": np.ones((rows, seq_len), np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy(),
          "loss_mask": np.ones((rows, seq_len), np.int32)}


def loss_by_position(token_scores: Callable, params: Any, rows: dict[str, np.ndarray], bucket: int, batch_size: int,
                     put: Callable[[np.ndarray], Any]) -> list[dict[str, float]]:
  """Mean next-token loss of each bucket of positions [start, start + bucket) over `rows` (`long_document_rows`).

  Args:
    token_scores: jitted `lm.evaluate.make_token_scores` function of the model.
    batch_size: rows per call (a multiple of the data-parallel size).
    put: places a [batch, seq] host array on the devices.
  Returns:
    Per bucket: {"start", "stop" (1-based positions of the predicted tokens, inclusive), "loss", "perplexity",
    "tokens"}.
  """
  calls = (token_scores(params, {k: put(v) for k, v in batch.items()})
           for batch in loader.evaluation_batches(rows, batch_size))
  scored = evaluate_lib._in_flight(calls)  # pylint: disable=protected-access
  log_probs = np.concatenate([lp for lp, _ in scored])[:len(rows["inputs"])]  # the last batch's padding cut off
  seq_len = log_probs.shape[1]
  out = []
  for start in range(0, seq_len, bucket):
    part = -log_probs[:, start:start + bucket].astype(np.float64)
    loss = float(part.mean())
    out.append({"start": start + 1, "stop": min(start + bucket, seq_len), "loss": loss,
                "perplexity": float(np.exp(min(loss, 700.0))), "tokens": float(part.size)})
  return out


def format_loss_by_position(results: dict[str, list[dict[str, float]]]) -> str:
  """A table: one row per position bucket, one loss column per model (name -> `loss_by_position` result)."""
  names = list(results)
  header = "| positions | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
  lines = [header]
  for i, bucket in enumerate(next(iter(results.values()))):
    cells = [f"{results[n][i]['loss']:.4f}" for n in names]
    lines.append(f"| {bucket['start']}-{bucket['stop']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def filler_ids(splits: Sequence[Any], min_ids: int) -> np.ndarray:
  """Documents of `splits` (without their BOS / EOS) concatenated in order until at least `min_ids` ids (or all)."""
  parts, count = [], 0
  for split in splits:
    for document, length in enumerate(split.lengths):
      if length > 2:
        parts.append(split.read(document, 1, int(length) - 1))
        count += int(length) - 2
      if count >= min_ids:
        return np.concatenate(parts).astype(np.int32)
  return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0,), np.int32)


def retrieval_requests(tokenizer, filler: np.ndarray, length: int, depth: float, trials: int,
                       seed: int) -> list[tuple[evaluate_lib.Request, evaluate_lib.Request, str]]:
  """`trials` probes of `length` ids in all, the needle after `depth` (0..1) of the filler; each is
  (request, control request, key): the control plants another key of as many ids in the same place.

  filler: int32 ids of natural text the haystacks are cut from (different offsets per trial).
  Raises:
    ValueError: the filler is shorter than a haystack, or the length leaves no room for filler.
  """
  rng = np.random.default_rng([seed, length, int(round(depth * 1000))])
  out = []
  for _ in range(trials):
    key = f"{rng.integers(10000, 100000)}"
    needle = tokenizer.encode(NEEDLE.format(key=key))
    other = needle
    while other == needle or len(other) != len(needle):  # a control needle of the same length, another key
      other = tokenizer.encode(NEEDLE.format(key=f"{rng.integers(10000, 100000)}"))
    question = tokenizer.encode(QUESTION)
    answer = tokenizer.encode(QUESTION + " " + key)[len(question):]
    if tokenizer.encode(QUESTION + " " + key)[:len(question)] != question:  # a piece merged across: use the pair
      answer = tokenizer.encode(" " + key)
    room = length - 1 - len(needle) - len(question) - len(answer) + 1  # BOS first; the last answer id is a target
    if room < 1:
      raise ValueError(f"a retrieval probe of {length} ids leaves no room for filler (needle, question and key "
                       f"take {length - room})")
    if len(filler) < room + 1:
      raise ValueError(f"the filler has {len(filler)} ids, fewer than the {room} a probe of {length} needs")
    offset = int(rng.integers(0, len(filler) - room))
    hay = [int(t) for t in filler[offset:offset + room]]
    at = int(round(depth * room))
    context = (tokenizer.bos_id, *hay[:at], *needle, *hay[at:], *question)
    control = (tokenizer.bos_id, *hay[:at], *other, *hay[at:], *question)
    out.append((evaluate_lib.Request(context, tuple(answer)), evaluate_lib.Request(control, tuple(answer)), key))
  return out


def retrieval_probe(token_scores: Callable, params: Any, tokenizer, filler: np.ndarray, lengths: Sequence[int],
                    depths: Sequence[float], trials: int, batch_size: int, put: Callable[[np.ndarray], Any],
                    seed: int = 0) -> list[dict[str, float]]:
  """Accuracy (greedy decoding gives the key exactly), mean key log-likelihood and its gain over the control
  (another key planted) per (length, depth).

  Each probe is one row of `length` ids. Returns per cell {"length", "depth", "accuracy", "key_log_likelihood",
  "control_log_likelihood", "gain", "trials"}.
  """
  out = []
  for length in lengths:
    for depth in depths:
      probes = retrieval_requests(tokenizer, filler, length, depth, trials, seed)
      requests = [r for r, _, _ in probes] + [c for _, c, _ in probes]
      scores = evaluate_lib.score_requests(token_scores, params, requests, seq_len=length, batch_size=batch_size,
                                           pad_id=tokenizer.pad_id, put=put, per_row=True)
      planted, control = scores[:trials], scores[trials:]
      key, other = float(np.mean([lp for lp, _ in planted])), float(np.mean([lp for lp, _ in control]))
      out.append({"length": length, "depth": depth, "accuracy": float(np.mean([g for _, g in planted])),
                  "key_log_likelihood": key, "control_log_likelihood": other, "gain": key - other,
                  "trials": trials})
  return out


def format_retrieval(results: dict[str, list[dict[str, float]]]) -> str:
  """A table: one row per (length, depth); per model the accuracy and the key log-likelihood's gain over the
  control (nats)."""
  names = list(results)
  header = ("| length | depth | " + " | ".join(f"{n} acc | {n} gain" for n in names) + " |\n|---:|---:|"
            + "---:|---:|" * len(names))
  lines = [header]
  for i, cell in enumerate(next(iter(results.values()))):
    cells = [f"{results[n][i]['accuracy']:.2f} | {results[n][i]['gain']:+.2f}" for n in names]
    lines.append(f"| {cell['length']} | {cell['depth']:.2f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
