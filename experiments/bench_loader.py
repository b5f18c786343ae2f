"""Data pipeline speed: tokenization, the training loader, and the demo training step the loader must feed.

    python -m experiments.bench_loader [--quick] [--workers 0,2] [--batches 300] [--train_steps 10]
        [--output_json PATH]

All in one process, on the embedded corpus (`data.corpus`; `--quick`: every 6th document),
in a temporary directory:

1. Tokenization. A BPE tokenizer of the demo's 4,096 pieces is trained on the training
   documents, as a launch trains it. Then ``encode``: sentencepiece over the text of every
   document in this one process (tokens/s of one core, MB/s of UTF-8 text); and
   ``shards.write`` end to end (the defaults of configs/tokenize/base.py) with 1 worker and
   with one per core, tokens being the ids written ([BOS] + tokens + [EOS] per document),
   worker start-up included.
2. The loader, at the demo's shapes (seq_len 256, global batch 16), over the training split
   of those shards: ``Stream.batch(step)`` called directly, then `TrainIterator` with each
   `--workers` count (0 = threads of this process, n = grain worker processes) and the demo's
   prefetch: tokens/s (rows x seq_len), loss tokens/s (loss_mask) and batches/s over
   `--batches` batches after a warm-up. Then a skip: the first batch of an iterator started
   at step 1,000,000, which reads nothing before it.
3. The demo training step (configs/demo.py for this backend, on the devices this process
   has) fed batches read from the loader beforehand: tokens/s over `--train_steps` steps
   after 2 warm-up steps, each step waited for.

Each loader setting's tokens/s is divided by the training tokens/s; the target is a loader
at least 10x faster than the step it feeds. The two are measured one after the other, each
with the whole machine. Progress goes to stderr, the tables to stdout; `run` returns the
rows for other scripts and `--output_json` writes them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Callable, Sequence

from absl import app
from absl import flags
import numpy as np

from configs import demo
from configs.tokenize import base as tokenize_base
from data import corpus
from data import shards
from data import tokenizer as tokenizer_lib

# jax, grain (data.loader) and lm are imported where they are used: `shards.write`'s spawned workers import this
# module again, and should start as fast as those of `python -m data.shards`.

TARGET_RATIO = 10.0  # loader tokens/s over training tokens/s
SKIP_STEP = 1_000_000
TRAIN_WARMUP_STEPS = 2
QUICK_EVERY = 6  # --quick keeps every QUICK_EVERY-th document
QUICK_BATCHES = 30
LOADER_WARMUP_BATCHES = 10

_QUICK = flags.DEFINE_bool("quick", False, f"every {QUICK_EVERY}th document and {QUICK_BATCHES} timed batches: "
                           "a run of well under a minute (the test's)")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "TrainIterator worker processes to measure (0 = threads)")
_BATCHES = flags.DEFINE_integer("batches", 300, "timed batches per loader setting (without --quick)")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, f"timed training steps (after {TRAIN_WARMUP_STEPS} warm-up)")
_OUTPUT_JSON = flags.DEFINE_string("output_json", "", "also write the rows to this JSON file")


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _rate(amount: float, seconds: float) -> float:
  return amount / max(seconds, 1e-9)


def tokenization_rows(documents: list[corpus.Document], tokenizer_dir: str, tokens_root: str,
                      log: Callable[[str], None]) -> tuple[list[dict], str]:
  """Rows of `encode` in this process and of `shards.write` with 1 worker and one per core.

  Returns:
    (rows, the tokens directory written with one worker per core).
  """
  tokenizer = tokenizer_lib.load(tokenizer_dir)
  texts = [d.text for d in documents if d.text]
  megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
  tokenizer.encode(texts[0])  # first-call costs stay out of the timing
  begin = time.perf_counter()
  tokens = sum(len(tokenizer.encode(t)) for t in texts)
  seconds = time.perf_counter() - begin
  rows = [{"part": "tokenize", "setting": "encode (this process)", "workers": 1, "documents": len(texts),
           "tokens": tokens, "megabytes": megabytes, "seconds": seconds, "tokens_per_s": _rate(tokens, seconds),
           "tokens_per_s_per_worker": _rate(tokens, seconds), "mb_per_s": _rate(megabytes, seconds)}]
  log(f"encode: {tokens:,} tokens in {seconds:.2f}s")
  defaults = tokenize_base.get_config().shards
  cores = os.cpu_count() or 1
  tokens_dir = ""
  for name, num_workers in (("shards.write, 1 worker", 1), (f"shards.write, all cores (num_workers=0: {cores})", 0)):
    tokens_dir = os.path.join(tokens_root, f"workers{num_workers}")
    begin = time.perf_counter()
    manifest = shards.write(documents, tokenizer_dir, tokens_dir, validation_fraction=defaults.validation_fraction,
                            split_seed=defaults.split_seed, record_tokens=defaults.record_tokens,
                            docs_per_shard=defaults.docs_per_shard, num_workers=num_workers,
                            chunk_docs=defaults.chunk_docs, log=lambda _: None)
    seconds = time.perf_counter() - begin
    workers = num_workers or cores
    splits = [split for source in manifest["sources"].values() for split in source.values()]
    ids = sum(split["ids"] for split in splits)
    rows.append({"part": "tokenize", "setting": name, "workers": workers,
                 "documents": sum(split["documents"] for split in splits), "tokens": ids, "megabytes": megabytes,
                 "seconds": seconds, "tokens_per_s": _rate(ids, seconds),
                 "tokens_per_s_per_worker": _rate(ids, seconds) / workers, "mb_per_s": _rate(megabytes, seconds)})
    log(f"{name}: {ids:,} ids in {seconds:.2f}s")
  return rows, tokens_dir


def _make_stream(tokens_dir: str, config):
  from data import loader  # pylint: disable=import-outside-toplevel
  tokens = shards.open_tokens(tokens_dir)
  return loader.make_stream({name: tokens.splits[name]["train"] for name in tokens.sources},
                            seq_len=config.data.seq_len, global_batch_size=config.train.global_batch_size,
                            seed=config.data.shuffle_seed, pad_id=tokenizer_lib.PAD_ID, total_steps=config.train.steps)


def loader_rows(stream, workers: Sequence[int], batches: int, prefetch: int, log: Callable[[str], None]) -> list[dict]:
  """Rows of `Stream.batch` called directly, of `TrainIterator` per worker count, and of the skip."""
  from data import loader  # pylint: disable=import-outside-toplevel
  tokens_per_batch = stream.global_batch_size * stream.seq_len

  def row(setting: str, num_workers: int, seconds: float, loss_tokens: int) -> dict:
    return {"part": "loader", "setting": setting, "workers": num_workers, "batches": batches, "seconds": seconds,
            "batches_per_s": _rate(batches, seconds), "tokens_per_s": _rate(batches * tokens_per_batch, seconds),
            "loss_tokens_per_s": _rate(loss_tokens, seconds)}

  stream.batch(0)  # readers open on the first read
  begin = time.perf_counter()
  loss_tokens = sum(int(stream.batch(step)["loss_mask"].sum()) for step in range(1, batches + 1))
  rows = [row("Stream.batch(step), direct", 0, time.perf_counter() - begin, loss_tokens)]
  log(f"Stream.batch: {rows[-1]['batches_per_s']:,.0f} batches/s")
  for num_workers in workers:
    iterator = loader.TrainIterator(stream, num_workers=num_workers, prefetch=prefetch)
    for _ in range(LOADER_WARMUP_BATCHES):  # starts the pipeline (and its workers) and fills the prefetch buffer
      next(iterator)
    begin = time.perf_counter()
    loss_tokens = sum(int(next(iterator)["loss_mask"].sum()) for _ in range(batches))
    rows.append(row(f"TrainIterator, num_workers={num_workers}", num_workers, time.perf_counter() - begin,
                    loss_tokens))
    iterator.close()
    del iterator
    log(f"TrainIterator num_workers={num_workers}: {rows[-1]['batches_per_s']:,.0f} batches/s")
  iterator = loader.TrainIterator(stream, step=SKIP_STEP, prefetch=prefetch)
  begin = time.perf_counter()
  batch = next(iterator)
  seconds = time.perf_counter() - begin
  iterator.close()
  expected = stream.batch(SKIP_STEP)
  if any(not np.array_equal(batch[k], expected[k]) for k in loader.BATCH_KEYS):
    raise AssertionError(f"the iterator started at step {SKIP_STEP} gave another batch than Stream.batch")
  rows.append({"part": "loader", "setting": f"skip: first batch of TrainIterator(step={SKIP_STEP:,})", "workers": 0,
               "step": SKIP_STEP, "seconds": seconds})
  log(f"skip to step {SKIP_STEP:,}: {seconds * 1e3:.1f} ms")
  return rows


def train_row(config, batches: list[dict[str, np.ndarray]], steps: int, log: Callable[[str], None]) -> dict:
  """The demo training step's speed on this process's devices, fed `batches` (read beforehand)."""
  import jax  # pylint: disable=import-outside-toplevel
  from lm import config as config_lib  # pylint: disable=import-outside-toplevel
  from lm import sharding  # pylint: disable=import-outside-toplevel
  from lm import train  # pylint: disable=import-outside-toplevel

  config = config_lib.for_platform(config, jax.default_backend())
  config_lib.validate(config, jax.device_count(), jax.process_count())
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  state = jax.block_until_ready(trainer.init_state(jax.random.PRNGKey(config.train.seed)))
  log(f"training: demo model compiled for {jax.device_count()} {jax.default_backend()} device(s)")
  seconds = 0.0
  for i, host_batch in enumerate(batches[:TRAIN_WARMUP_STEPS + steps]):
    begin = time.perf_counter()
    state, metrics = trainer.train_step(state, sharding.global_batch(host_batch, trainer.batch_sharding))
    jax.block_until_ready((state, metrics))
    if i >= TRAIN_WARMUP_STEPS:
      seconds += time.perf_counter() - begin
  loss = float(metrics["train/loss"])
  if not math.isfinite(loss):
    raise AssertionError(f"the demo training step gave loss {loss}")
  timed = batches[TRAIN_WARMUP_STEPS:TRAIN_WARMUP_STEPS + steps]
  rows_tokens = sum(b["inputs"].size for b in timed)
  loss_tokens = sum(int(b["loss_mask"].sum()) for b in timed)
  log(f"training: {steps} steps in {seconds:.2f}s, loss {loss:.3f}")
  return {"part": "train", "setting": f"demo train_step ({config.model.compute_dtype})",
          "devices": jax.device_count(), "platform": jax.default_backend(), "steps": steps, "seconds": seconds,
          "step_seconds": seconds / steps, "tokens_per_s": _rate(rows_tokens, seconds),
          "loss_tokens_per_s": _rate(loss_tokens, seconds), "loss": loss}


def run(quick: bool = False, workers: Sequence[int] = (0, 2), batches: int = 300, train_steps: int = 10,
        log: Callable[[str], None] = _stderr) -> list[dict]:
  """Measures tokenization, the loader and the demo training step (see the module docstring).

  Returns:
    Dicts with "part" ("tokenize", "loader" or "train"), "setting" and that part's numbers;
    loader rows of a speed carry "ratio_to_train", their tokens/s over the training row's.
  """
  from data import loader  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  config = demo.get_config()
  batches = min(batches, QUICK_BATCHES) if quick else batches
  defaults = tokenize_base.get_config().shards
  documents = list(corpus.embedded_documents())
  if quick:
    documents = documents[::QUICK_EVERY]
  train_docs, _ = corpus.split(documents, defaults.validation_fraction, defaults.split_seed)
  with tempfile.TemporaryDirectory() as directory:
    tokenizer_dir = os.path.join(directory, "tokenizer")
    begin = time.perf_counter()
    tokenizer_lib.train(train_docs, config.model.vocab_size, tokenizer_dir, config.data.tokenizer_max_sentences,
                        defaults.split_seed)
    log(f"tokenizer: {config.model.vocab_size} pieces trained on {len(train_docs):,} documents in "
        f"{time.perf_counter() - begin:.1f}s")
    rows, tokens_dir = tokenization_rows(documents, tokenizer_dir, os.path.join(directory, "tokens"), log)
    stream = _make_stream(tokens_dir, config)
    rows += loader_rows(stream, workers, batches, config.data.prefetch_batches, log)
    iterator = loader.TrainIterator(stream, prefetch=config.data.prefetch_batches)
    train_batches = [next(iterator) for _ in range(TRAIN_WARMUP_STEPS + train_steps)]
    iterator.close()
    training = train_row(config, train_batches, train_steps, log)
  for row in rows:
    if row["part"] == "loader" and "tokens_per_s" in row:
      row["ratio_to_train"] = row["tokens_per_s"] / training["tokens_per_s"]
  log(f"done in {time.perf_counter() - start:.1f}s")
  return rows + [training]


def print_table(rows: list[dict]) -> None:
  """The rows of `run` as three tables: tokenization, loader, training."""
  tokenize = [r for r in rows if r["part"] == "tokenize"]
  loader_ = [r for r in rows if r["part"] == "loader"]
  training = next(r for r in rows if r["part"] == "train")
  encode = tokenize[0]
  print(f"Tokenization: {encode['documents']:,} documents, {encode['megabytes']:.1f} MB of text, BPE of "
        f"{demo.get_config().model.vocab_size} pieces, {os.cpu_count()} CPU cores")
  header = (f"{'setting':<42} {'workers':>7} {'tokens':>11} {'seconds':>8} {'tokens/s':>11} {'tokens/s/worker':>16} "
            f"{'MB/s':>7}")
  print(header)
  print("-" * len(header))
  for r in tokenize:
    print(f"{r['setting']:<42} {r['workers']:>7} {r['tokens']:>11,} {r['seconds']:>8.2f} {r['tokens_per_s']:>11,.0f} "
          f"{r['tokens_per_s_per_worker']:>16,.0f} {r['mb_per_s']:>7.2f}")
  print()
  config = demo.get_config()
  timed = next(r for r in loader_ if "batches" in r)["batches"]
  print(f"Loader: seq_len {config.data.seq_len}, global batch {config.train.global_batch_size} "
        f"({config.data.seq_len * config.train.global_batch_size:,} tokens a batch), prefetch "
        f"{config.data.prefetch_batches}; {timed} timed batches after {LOADER_WARMUP_BATCHES} warm-up")
  header = (f"{'setting':<46} {'batches/s':>10} {'tokens/s':>11} {'loss tokens/s':>14} {'x train':>8} "
            f"{'>= ' + format(TARGET_RATIO, 'g') + 'x':>7}")
  print(header)
  print("-" * len(header))
  for r in loader_:
    if "ratio_to_train" not in r:
      print(f"{r['setting']:<46} {r['seconds'] * 1e3:>10.1f} ms")
      continue
    met = "yes" if r["ratio_to_train"] >= TARGET_RATIO else "NO"
    print(f"{r['setting']:<46} {r['batches_per_s']:>10,.1f} {r['tokens_per_s']:>11,.0f} "
          f"{r['loss_tokens_per_s']:>14,.0f} {r['ratio_to_train']:>7.1f}x {met:>7}")
  print()
  print(f"Training: {training['setting']} on {training['devices']} {training['platform']} device(s); "
        f"{training['steps']} steps after {TRAIN_WARMUP_STEPS} warm-up, each waited for")
  header = f"{'setting':<46} {'s/step':>10} {'tokens/s':>11} {'loss tokens/s':>14} {'loss':>8}"
  print(header)
  print("-" * len(header))
  print(f"{training['setting']:<46} {training['step_seconds']:>10.3f} {training['tokens_per_s']:>11,.0f} "
        f"{training['loss_tokens_per_s']:>14,.0f} {training['loss']:>8.3f}")


def main(argv) -> None:
  del argv
  rows = run(quick=_QUICK.value, workers=[int(w) for w in _WORKERS.value], batches=_BATCHES.value,
             train_steps=_TRAIN_STEPS.value)
  print_table(rows)
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
