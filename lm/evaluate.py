"""Evaluation: perplexity and bits per byte per source, and multiple-choice benchmarks by log-likelihood.

Perplexity is the token-weighted mean loss over fixed packed rows. Bits per byte divides the
summed loss (in bits) by the UTF-8 bytes the scored tokens stand for, so models with
different tokenizers compare on the same text.

Multiple choice is scored as lm-evaluation-harness scores it: one request per choice, the
context followed by the choice (after a space); the request's log-likelihood is the sum of
the log-probabilities of the choice's tokens. `acc` takes the choice of highest
log-likelihood, `acc_norm` the highest log-likelihood per character of the choice. The
tokens of a choice are those the whole text has past the context's own tokens, so a merge
across the boundary is counted where the tokenizer puts it. Requests are packed several to
a row as separate documents (segment ids keep them from seeing each other, positions restart
at 0), which gives the scores of one request per row (tested) at a fraction of the cost.

    python -m lm.evaluate --run RUN_DIR [--step S] --task perplexity --data TOKENS_DIR
    python -m lm.evaluate --run RUN_DIR --task hellaswag --data hellaswag.jsonl [--shots 5]

Long-context evaluation (loss by position, the retrieval probe) is in lm/long_context.py and
runs from the same command: --task position_loss | retrieval.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm import tasks as tasks_lib

IN_FLIGHT = 2  # evaluation batches dispatched ahead of the one being read
TOO_LONG = ("truncate", "skip")  # a request longer than the model's rows: drop context from the left, or skip it


def evaluate(eval_step: Callable[[Any, Any], tuple[jax.Array, jax.Array]], params: Any,
             batches: Iterable[dict[str, jax.Array]]) -> dict[str, float]:
  """Token-weighted mean loss over `batches`.

  Args:
    eval_step: (params, batch) -> (summed next-token loss in nats, number of target tokens).
    params: model parameters.
    batches: global batches (dicts of [batch, seq] int32 arrays).

  Returns:
    {"loss": nats per token, "perplexity": exp(loss), "tokens": tokens scored}.
  """
  total_loss = total_tokens = 0.0
  for summed, count in _in_flight(eval_step(params, batch) for batch in batches):
    total_loss, total_tokens = total_loss + float(np.asarray(summed)), total_tokens + float(np.asarray(count))
  if total_tokens == 0:
    raise ValueError("validation set has no target tokens")
  loss = total_loss / total_tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": total_tokens}


def _in_flight(calls: Iterable[Any], depth: int = IN_FLIGHT) -> Iterator[Any]:
  """The results of the dispatched `calls` in order, with at most `depth` dispatched and not yet yielded.

  Dispatching a few ahead keeps the devices busy while the host reads; dispatching every batch
  at once can stall the simulated multi-device CPU backend, whose collectives of many
  concurrent executions wait on one another.
  """
  pending = collections.deque()
  for call in calls:
    pending.append(call)
    if len(pending) > depth:
      yield jax.device_get(pending.popleft())
  while pending:
    yield jax.device_get(pending.popleft())


def piece_byte_lengths(tokenizer) -> np.ndarray:
  """[vocab] int64: UTF-8 bytes each piece decodes to (byte pieces 1, control pieces 0).

  The tokenizer keeps whitespace as is and adds no prefix, so a text's bytes are exactly the
  sum over its pieces.
  """
  processor = tokenizer.processor
  lengths = np.zeros(processor.get_piece_size(), np.int64)
  for i in range(len(lengths)):
    if processor.is_control(i) or processor.is_unknown(i):
      continue
    lengths[i] = 1 if processor.is_byte(i) else len(processor.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
  return lengths


def text_bytes(rows: dict[str, np.ndarray], byte_lengths: np.ndarray) -> int:
  """UTF-8 bytes of the target tokens of `rows` (those under loss_mask)."""
  return int(byte_lengths[rows["targets"]][rows["loss_mask"] > 0].sum())


def with_bits_per_byte(result: dict[str, float], num_bytes: int) -> dict[str, float]:
  """`evaluate`'s result with "bytes" and "bits_per_byte" (summed loss in bits over the bytes scored)."""
  bits = result["loss"] * result["tokens"] / math.log(2)
  return {**result, "bytes": float(num_bytes), "bits_per_byte": bits / num_bytes if num_bytes else math.nan}


# --- multiple choice ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
  context: tuple[int, ...]  # token ids, BOS first
  continuation: tuple[int, ...]  # token ids scored


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
  """The request of `continuation` after `context`; trailing spaces of the context move to the continuation."""
  stripped = context.rstrip(" ")
  continuation = context[len(stripped):] + continuation
  whole = tokenizer.encode(stripped + continuation)
  head = tokenizer.encode(stripped)
  # Pieces may merge across the boundary: the context keeps the longest prefix of its own pieces.
  shared = 0
  while shared < min(len(head), len(whole)) and head[shared] == whole[shared]:
    shared += 1
  shared = min(shared, len(whole) - 1)  # a continuation scores at least one token
  return Request((tokenizer.bos_id, *whole[:shared]), tuple(whole[shared:]))


def make_token_scores(forward: Callable) -> Callable:
  """(params, batch) -> (log-probability of each target [batch, seq] float32, target is the argmax [batch, seq] bool).

  `forward(params, inputs, segment_ids, positions) -> logits [batch, seq, vocab]`.
  """

  def token_scores(params, batch):
    logits = forward(params, batch["inputs"], batch["segment_ids"], batch["positions"]).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == batch["targets"]
    return target, greedy

  return token_scores


def pack(requests: Sequence[Request], seq_len: int, pad_id: int,
         per_row: bool = False) -> tuple[dict[str, np.ndarray], list[tuple[int, int, int]]]:
  """Rows holding every request as its own document, and where each request's scored targets are.

  Requests are placed longest first, each in the first row with room (first-fit decreasing).
  Each must fit a row: len(context) + len(continuation) - 1 <= seq_len.

  Returns:
    rows: BATCH_KEYS -> [rows, seq_len] int32 (loss_mask on the continuation targets).
    places: per request, in the order given, (row, first scored column, number of scored tokens).
  """
  lengths = [len(r.context) + len(r.continuation) - 1 for r in requests]
  if max(lengths) > seq_len:
    raise ValueError(f"a request of {max(lengths) + 1} tokens does not fit rows of {seq_len}")
  used: list[int] = []  # columns filled per row
  row_of = [0] * len(requests)
  for i in sorted(range(len(requests)), key=lambda i: -lengths[i]):
    row = next((r for r, u in enumerate(used) if u + lengths[i] <= seq_len), None) if not per_row else None
    if row is None:
      used.append(0)
      row = len(used) - 1
    row_of[i] = row
    used[row] += lengths[i]
  rows = {k: np.zeros((len(used), seq_len), np.int32) for k in ("inputs", "targets", "segment_ids", "positions",
                                                                 "loss_mask")}
  rows["inputs"][:] = rows["targets"][:] = pad_id
  filled = [0] * len(used)
  places = []
  for i, request in enumerate(requests):  # within a row, in the order given
    row, start, n = row_of[i], filled[row_of[i]], lengths[i]
    tokens = request.context + request.continuation
    rows["inputs"][row, start:start + n] = tokens[:-1]
    rows["targets"][row, start:start + n] = tokens[1:]
    rows["segment_ids"][row, start:start + n] = int(rows["segment_ids"][row].max()) + 1
    rows["positions"][row, start:start + n] = np.arange(n)
    first = start + n - len(request.continuation)
    rows["loss_mask"][row, first:start + n] = 1
    places.append((row, first, len(request.continuation)))
    filled[row] += n
  return rows, places


def score_requests(token_scores: Callable, params: Any, requests: Sequence[Request], *, seq_len: int,
                   batch_size: int, pad_id: int, put: Callable[[np.ndarray], Any],
                   per_row: bool = False) -> list[tuple[float, bool]]:
  """(log-likelihood of the continuation, whether greedy decoding gives it) per request.

  Args:
    token_scores: jitted `make_token_scores` function.
    batch_size: rows per call (a multiple of the data-parallel size); the last batch is padded.
    put: places a [batch, seq] host array on the devices.
    per_row: one request per row instead of packing (the reference packing must equal).
  """
  if not requests:
    return []
  rows, places = pack(requests, seq_len, pad_id, per_row=per_row)
  total = len(rows["inputs"])

  def batches():
    for start in range(0, total, batch_size):
      batch = {k: v[start:start + batch_size] for k, v in rows.items()}
      missing = batch_size - len(batch["inputs"])
      if missing:
        batch = {k: np.concatenate([v, np.zeros((missing, seq_len), np.int32)]) for k, v in batch.items()}
      yield {k: put(v) for k, v in batch.items()}

  scores = list(_in_flight(token_scores(params, batch) for batch in batches()))
  log_probs = np.concatenate([np.asarray(lp) for lp, _ in scores])
  greedy = np.concatenate([np.asarray(g) for _, g in scores])
  return [(float(log_probs[r, c:c + n].astype(np.float64).sum()), bool(greedy[r, c:c + n].all()))
          for r, c, n in places]


def _note(counter: dict[str, list[int]], reason: str, line: int) -> None:
  entry = counter.setdefault(reason, [0, line])
  entry[0] += 1


def evaluate_task(task: str, path: str, *, tokenizer, token_scores: Callable, params: Any, seq_len: int,
                  batch_size: int, put: Callable[[np.ndarray], Any], shots: int = 0, fewshot_path: str = "",
                  seed: int = 0, max_items: int = 0, too_long: str = "truncate") -> dict[str, Any]:
  """Scores the multiple-choice `task` file `path`.

  Args:
    shots: solved examples before each item, drawn with `seed` from `fewshot_path` (default: `path`
      itself, never the item being evaluated).
    max_items: score the first this many usable items (0 = all).
    too_long: 'truncate' keeps the last seq_len + 1 tokens of a request (context dropped from the
      left), 'skip' leaves the item out; either way it is counted with its first line.

  Returns:
    {"task", "items", "acc", "acc_norm" (not for lambada), "perplexity" (lambada), "chance", "shots",
    "skipped": reason -> [count, first line], "truncated": [count, first line] or None, "seconds"}.
  """
  if too_long not in TOO_LONG:
    raise ValueError(f"too_long must be one of {TOO_LONG}, got {too_long!r}")
  start_time = time.perf_counter()
  task_file = tasks_lib.read(task, path)
  pool = tasks_lib.read(task, fewshot_path).items if fewshot_path else task_file.items
  items = task_file.items[:max_items] if max_items else task_file.items
  skipped = {k: list(v) for k, v in task_file.skipped.items()}
  truncated: list[int] | None = None
  requests, owners = [], []
  for index, item in enumerate(items):
    context = tasks_lib.fewshot_context(item, index, pool, shots, seed, same_file=not fewshot_path)
    item_requests = [encode_pair(tokenizer, context, tasks_lib.CONTINUATION_DELIMITER + choice)
                     for choice in item.choices]
    if any(len(r.context) + len(r.continuation) - 1 > seq_len for r in item_requests):
      if too_long == "skip" or any(len(r.continuation) > seq_len for r in item_requests):
        _note(skipped, f"longer than the model's {seq_len}-token rows", item.line)
        continue
      item_requests = [Request(r.context[-(seq_len + 1 - len(r.continuation)):], r.continuation)
                       for r in item_requests]
      truncated = [truncated[0] + 1, truncated[1]] if truncated else [1, item.line]
    requests.extend(item_requests)
    owners.append((item, len(item_requests)))
  if not owners:
    raise ValueError(f"{path}: no {task} item could be scored (skipped: {skipped})")
  scores = score_requests(token_scores, params, requests, seq_len=seq_len, batch_size=batch_size,
                          pad_id=tokenizer.pad_id, put=put)
  correct = correct_norm = 0
  log_likelihood = 0.0
  offset = 0
  for item, count in owners:
    item_scores = scores[offset:offset + count]
    offset += count
    lls = np.array([ll for ll, _ in item_scores])
    if task == "lambada":
      correct += item_scores[0][1]
      log_likelihood += lls[0]
      continue
    lengths = np.array([max(len(c), 1) for c in item.choices], np.float64)
    correct += int(np.argmax(lls)) == item.answer
    correct_norm += int(np.argmax(lls / lengths)) == item.answer
  n = len(owners)
  result = {"task": task, "path": path, "items": n, "shots": shots, "acc": correct / n}
  if task == "lambada":
    result.update(perplexity=math.exp(min(-log_likelihood / n, 700.0)), chance=0.0)
  else:
    result.update(acc_norm=correct_norm / n, chance=float(np.mean([1 / len(item.choices) for item, _ in owners])))
  result.update(skipped=skipped, truncated=truncated, seconds=time.perf_counter() - start_time)
  return result


def describe_problems(result: dict[str, Any]) -> str:
  """One line on the skipped and truncated items of `evaluate_task`'s result ('' when none)."""
  parts = [f"skipped {count} ({reason}; first at line {first})" for reason, (count, first) in result["skipped"].items()]
  if result["truncated"]:
    parts.append(f"truncated {result['truncated'][0]} from the left (first at line {result['truncated'][1]})")
  return "; ".join(parts)


# --- command line ---------------------------------------------------------------------------------------------------

def evaluate_sources(eval_step: Callable[[Any, Any], tuple[jax.Array, jax.Array]], params: Any,
                     rows_by_source: dict[str, dict[str, np.ndarray]], bytes_by_source: dict[str, int],
                     batch_size: int, put: Callable[[np.ndarray], Any]) -> dict[str, dict[str, float]]:
  """`with_bits_per_byte(evaluate(...))` of each source's fixed rows, and of all of them (token-weighted): "all".

  Args:
    rows_by_source: source -> BATCH_KEYS -> [rows, seq] int32 (see data.loader.evaluation_rows).
    bytes_by_source: source -> UTF-8 bytes of its target tokens (`text_bytes`).
    put: places a [batch, seq] host array on the devices.
  """
  from data import loader  # pylint: disable=import-outside-toplevel  # data.loader is heavy for task-only use
  results, loss_sum, token_sum = {}, 0.0, 0.0
  for name, rows in rows_by_source.items():
    batches = ({k: put(v) for k, v in batch.items()} for batch in loader.evaluation_batches(rows, batch_size))
    results[name] = with_bits_per_byte(evaluate(eval_step, params, batches), bytes_by_source[name])
    loss_sum, token_sum = loss_sum + results[name]["loss"] * results[name]["tokens"], \
        token_sum + results[name]["tokens"]
  loss = loss_sum / token_sum
  results["all"] = with_bits_per_byte({"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": token_sum},
                                      sum(bytes_by_source.values()))
  return results


def domain_losses(results: dict[str, dict[str, float]], original_sources) -> dict[str, float]:
  """{"original": loss, "new": loss}, token-weighted over the sources in `original_sources` (data.replay_sources)
  and over the others, of `evaluate_sources` results (without "all"); {} when no original sources are named.
  Continued pre-training reads forgetting off the first and adaptation off the second."""
  if not original_sources:
    return {}
  out = {}
  for domain, members in (("original", [n for n in results if n in original_sources]),
                          ("new", [n for n in results if n not in original_sources])):
    tokens = sum(results[n]["tokens"] for n in members)
    if tokens:
      out[domain] = sum(results[n]["loss"] * results[n]["tokens"] for n in members) / tokens
  return out


def perplexity_of_tokens(run, tokens_dir: str, split: str, max_rows: int) -> dict[str, dict[str, float]]:
  """Loss, perplexity and bits per byte of each source of the token shards `tokens_dir` (and of all: "all")."""
  from data import loader  # pylint: disable=import-outside-toplevel
  from data import shards  # pylint: disable=import-outside-toplevel
  from lm import sharding  # pylint: disable=import-outside-toplevel
  tokens = shards.open_tokens(tokens_dir, tokenizer_dir=f"{run.run_dir}/tokenizer")
  byte_lengths = piece_byte_lengths(run.tokenizer)
  rows_by_source = {
      name: loader.evaluation_rows(tokens.splits[name][split], seq_len=run.config.data.seq_len,
                                   pad_id=run.tokenizer.pad_id, max_rows=max_rows)
      for name in tokens.sources if tokens.splits[name][split].num_documents}
  if not rows_by_source:
    raise ValueError(f"{tokens_dir} has no {split} documents in any source")
  return evaluate_sources(run.trainer.eval_step, run.params, rows_by_source,
                          {name: text_bytes(rows, byte_lengths) for name, rows in rows_by_source.items()},
                          run.config.train.global_batch_size,
                          lambda a: sharding.from_full_host_array(a, run.trainer.batch_sharding))


def format_perplexity(results: dict[str, dict[str, float]]) -> str:
  lines = [f"{'source':<12} {'loss':>8} {'ppl':>9} {'bits/byte':>10} {'tokens':>10} {'bytes':>11}"]
  for name, r in results.items():
    lines.append(f"{name:<12} {r['loss']:>8.4f} {r['perplexity']:>9.2f} {r['bits_per_byte']:>10.4f} "
                 f"{r['tokens']:>10,.0f} {r['bytes']:>11,.0f}")
  return "\n".join(lines)


def format_task(result: dict[str, Any]) -> str:
  scores = f"acc {result['acc']:.4f}"
  scores += f"  perplexity {result['perplexity']:.2f}" if "perplexity" in result else \
      f"  acc_norm {result['acc_norm']:.4f}  (chance {result['chance']:.3f})"
  line = f"{result['task']} ({result['shots']}-shot, {result['items']} items, {result['seconds']:.1f}s): {scores}"
  problems = describe_problems(result)
  return line + (f"\n  {problems}" if problems else "")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lm.evaluate", description=__doc__.split("\n")[0])
  parser.add_argument("--run", required=True, help="run directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest sound one)")
  parser.add_argument("--task", required=True, choices=("perplexity", "position_loss", "retrieval") + tasks_lib.TASKS)
  parser.add_argument("--data", required=True,
                      help="perplexity, position_loss, retrieval: token shards directory; tasks: JSONL file")
  parser.add_argument("--split", default="validation", choices=("train", "validation"), help="perplexity: split")
  parser.add_argument("--max_rows", type=int, default=0, help="perplexity: rows per source (0 = all)")
  parser.add_argument("--shots", type=int, default=0, help="tasks: solved examples before each item")
  parser.add_argument("--fewshot_data", default="", help="tasks: file the examples are drawn from (default --data)")
  parser.add_argument("--seed", type=int, default=0, help="tasks: seed of the few-shot draws")
  parser.add_argument("--max_items", type=int, default=0, help="tasks: items scored (0 = all)")
  parser.add_argument("--too_long", default="truncate", choices=TOO_LONG, help="tasks: requests longer than a row")
  parser.add_argument("--seq_len", type=int, default=0, help="position_loss: row length (default: the run's data.seq_len)")
  parser.add_argument("--bucket", type=int, default=128, help="position_loss: positions per bucket")
  parser.add_argument("--max_documents", type=int, default=64, help="position_loss: documents (rows) read (0 = all)")
  parser.add_argument("--lengths", default="", help="retrieval: comma-separated probe lengths (default: data.seq_len)")
  parser.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="retrieval: comma-separated needle depths in [0, 1]")
  parser.add_argument("--trials", type=int, default=20, help="retrieval: probes per length and depth")
  parser.add_argument("--out", default="", help="also write the result as JSON here")
  args = parser.parse_args(argv)

  from lm import config as config_lib  # pylint: disable=import-outside-toplevel
  from lm import load  # pylint: disable=import-outside-toplevel
  from lm import sharding  # pylint: disable=import-outside-toplevel
  try:
    run = load.load_run(args.run, args.step, log=lambda m: print(m, file=sys.stderr))
    print(f"{run.run_dir} step {run.step}")
    if args.task == "perplexity":
      result: Any = perplexity_of_tokens(run, args.data, args.split, args.max_rows)
      print(format_perplexity(result))
    elif args.task in ("position_loss", "retrieval"):
      result = _long_context(run, args)
    else:
      result = evaluate_task(
          args.task, args.data, tokenizer=run.tokenizer, token_scores=run.trainer.token_scores, params=run.params,
          seq_len=run.config.data.seq_len, batch_size=run.config.train.global_batch_size,
          put=lambda a: sharding.from_full_host_array(a, run.trainer.batch_sharding), shots=args.shots,
          fewshot_path=args.fewshot_data, seed=args.seed, max_items=args.max_items, too_long=args.too_long)
      print(format_task(result))
  except (config_lib.ConfigError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"run": run.run_dir, "step": run.step, "task": args.task, "result": result}, f, indent=1)
  return 0


def _long_context(run, args) -> Any:
  """The position_loss or retrieval task of `main` on run `run`; prints its table."""
  from data import shards  # pylint: disable=import-outside-toplevel
  from lm import long_context  # pylint: disable=import-outside-toplevel
  from lm import sharding  # pylint: disable=import-outside-toplevel
  tokens = shards.open_tokens(args.data, tokenizer_dir=f"{run.run_dir}/tokenizer")
  splits = [tokens.splits[name][args.split] for name in tokens.sources]
  batch_size = sharding.data_parallel_size(run.trainer.mesh)
  put = lambda a: sharding.from_full_host_array(a, run.trainer.batch_sharding)  # noqa: E731
  if args.task == "position_loss":
    rows = long_context.long_document_rows(splits, args.seq_len or run.config.data.seq_len, args.max_documents)
    result = long_context.loss_by_position(run.trainer.token_scores, run.params, rows, args.bucket, batch_size, put)
    print(f"{len(rows['inputs'])} documents")
    print(long_context.format_loss_by_position({f"step {run.step}": result}))
    return result
  lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else [run.config.data.seq_len]
  depths = [float(x) for x in args.depths.split(",")]
  if any(not 0.0 <= d <= 1.0 for d in depths):
    raise ValueError(f"--depths must lie in [0, 1], got {args.depths}")
  filler = long_context.filler_ids(splits, 4 * max(lengths))
  result = long_context.retrieval_probe(run.trainer.token_scores, run.params, run.tokenizer, filler, lengths, depths,
                                        args.trials, batch_size, put, seed=args.seed)
  print(long_context.format_retrieval({f"step {run.step}": result}))
  return result


if __name__ == "__main__":
  sys.exit(main())
