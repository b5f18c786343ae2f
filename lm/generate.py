"""Decoding: the KV cache, sampling, batched generation of continuations, and its command line.

`init_cache` and `decode` run the model incrementally: a prompt is written into the cache
in one call (prefill), then each new token costs one call over the cached keys/values.

`Generator` continues a batch of prompts of different lengths. They are left-padded to a
common length: padding has segment id 0, which no real token has, so nothing attends to it,
and each row's positions start at 0 on its first real token. Every row then shares the
cache's slot indices (causality and sliding windows count slots, and a row's slots and
positions differ by its constant padding), prefills in one call and decodes one token per
call, until each row has drawn EOS or the token limit is reached.

`sample` is the simple fixed-window sampler used at the end of training; it recomputes
the whole window for each token, so its one compiled step serves every position.

Command line, on a run directory written by lm.launch:

    python -m lm.generate --run runs/tiny --prompt "def read_config(path):" --prompt "The list type" \
        [--step S] [--max_new_tokens N] [--temperature T] [--top_k K] [--top_p P] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lm import sharding


def _cache_shapes(model: nn.Module, batch_size: int, max_len: int) -> Any:
  """ShapeDtypeStructs of the cache collection of `model` for `batch_size` rows of `max_len` tokens."""
  if max_len > model.cfg.max_seq_len:
    raise ValueError(f"a KV cache of {max_len} tokens exceeds model.max_seq_len ({model.cfg.max_seq_len})")
  tokens = jnp.zeros((batch_size, max_len), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch_size, max_len))
  segment_ids = jnp.ones_like(tokens)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, segment_ids, positions, decode=True))
  return shapes["cache"]


def init_cache(model: nn.Module, batch_size: int, max_len: int) -> Any:
  """Zeroed KV cache of `model` for `batch_size` rows of up to `max_len` tokens (shapes only, no params built).

  Per layer: "key"/"value" [num_groups, batch, slots, num_kv_heads, head_dim] in compute
  dtype, "segment_ids" and "positions" [num_groups, batch, slots] and the write "index"
  [num_groups]; slots = max_len for global layers, min(window, max_len) for local ones.
  The caller keeps the tokens decoded in total within max_len (inside jit, a write past the end
  cannot raise).

  Raises:
    ValueError: max_len exceeds the model's context length, model.max_seq_len.
  """
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), _cache_shapes(model, batch_size, max_len))


def cached_length(cache: Any) -> jax.Array:
  """int32 scalar: tokens already written into `cache` (the slot of the next one)."""
  return cache["blocks"]["layer_0"]["attention"]["index"][0]


def decode(model: nn.Module, params: Any, cache: Any, tokens: jax.Array, segment_ids: jax.Array | None = None,
           positions: jax.Array | None = None) -> tuple[jax.Array, Any]:
  """Runs `tokens` [batch, t] int32 through the cache, into its next t slots.

  Args:
    segment_ids: [batch, t] int32 document id of each token, 0 = padding (attended by no
      other segment); None = 1 everywhere: the tokens continue the one document of each row.
    positions: [batch, t] int32 position of each token in its document (RoPE, learned
      positions); None = its slot, cached_length(cache) .. + t - 1.

  A prompt can be written in one call (prefill) or in chunks, and then one token per call.

  Returns:
    logits [batch, t, vocab] float32 (the same as a full forward pass over the whole prefix)
    and the updated cache.
  """
  batch, length = tokens.shape
  if segment_ids is None:
    segment_ids = jnp.ones_like(tokens)
  if positions is None:
    start = cached_length(cache)
    positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
  (logits, _), mutated = model.apply({"params": params, "cache": cache}, tokens, segment_ids, positions,
                                     decode=True, mutable=["cache"])
  return logits, mutated["cache"]


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen from its logits; the filters combine (temperature, then top-k, then top-p).

  Raises:
    ValueError: a setting out of range (names it).
  """

  temperature: float = 0.0  # softmax temperature; 0 = greedy (argmax), the other settings unused
  top_k: int = 0  # draw among the k most likely tokens; 0 = all
  top_p: float = 1.0  # nucleus: the smallest set of most likely tokens whose probability reaches p; 1 = all

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """[batch, vocab] logits -> float32 logits / temperature, with the tokens top-k and top-p drop set to -inf.

  Needs sampling.temperature > 0. Top-k keeps every token tied with the k-th; top-p keeps a
  token when the tokens more likely than it (after top-k) hold less than p of the probability,
  so the most likely token always stays.
  """
  logits = logits.astype(jnp.float32) / sampling.temperature
  if sampling.top_k > 0:
    kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    order = jnp.argsort(-logits, axis=-1)  # most likely first
    probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above each one
    keep = jnp.take_along_axis(before < sampling.top_p, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
  """The next token of each row: [batch, vocab] logits -> [batch] int32 (argmax when temperature is 0)."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, sampling), axis=-1).astype(jnp.int32)


def make_next_token_fn(forward: Callable, temperature: float, top_k: int) -> Callable:
  """(params, tokens [batch, window], length, rng) -> next token [batch] int32, for jax.jit.

  `forward(params, inputs, segment_ids, positions) -> logits [batch, window, vocab]`; the
  token is drawn from the logits at position `length - 1`.
  """
  sampling = Sampling(temperature, top_k)

  def next_token(params, tokens, length, rng):
    batch, window = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(window, dtype=jnp.int32), (batch, window))
    # One document per row; the causal mask keeps the not-yet-written tail out of view.
    segment_ids = jnp.ones_like(tokens)
    logits = forward(params, tokens, segment_ids, positions)
    logits = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)  # [batch, vocab]
    return choose_tokens(logits, rng, sampling)

  return next_token


@dataclasses.dataclass(frozen=True)
class Generation:
  """The continuations of a batch of prompts, and what they cost."""

  tokens: list[list[int]]  # new ids of each prompt, in order, ending before EOS
  prompt_tokens: int  # ids in all prompts (padding excluded)
  new_tokens: int  # ids in all continuations (EOS excluded)
  compile_seconds: float  # compiling the prefill and the step for this batch and length (0 when compiled before)
  prefill_seconds: float  # the prefill call, up to the first new token of each row on the host
  decode_seconds: float  # the per-token calls after it
  decode_steps: int  # per-token calls made


class Generator:
  """Continues batches of prompts of `model` with the KV cache: one prefill call, then one call per token.

  The prefill and the per-token step are compiled once per (rows, padded prompt length,
  cache length, Sampling) and kept; the cache is donated to each call. With a `mesh`, rows
  are split over its data-parallel axes (the batch is padded up to a multiple of their size
  with rows that are dropped from the output), parameters are laid out by the logical-axis
  `rules`, and the cache of each row lives with the row; the [batch] vectors passed between
  steps (the drawn tokens) are replicated, so every process can read them.
  """

  def __init__(self, model: nn.Module, mesh: jax.sharding.Mesh | None = None, rules: Sequence = ()):
    self.model = model
    self.mesh = mesh
    self.rules = tuple(rules)
    self._executables: dict[tuple, Any] = {}
    self._param_shardings = None
    self._batch_axes = None  # the mesh axes the batch is split over
    if mesh is not None:
      self._batch_axes = sharding.batch_sharding(mesh, self.rules).spec[0]
      dummy = jnp.zeros((1, 1), jnp.int32)
      with self._context():
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, dummy, dummy)["params"])
      self._param_shardings = sharding.logical_shardings(nn.get_partition_spec(boxed), mesh, self.rules)

  @property
  def data_parallel_size(self) -> int:
    return 1 if self.mesh is None else sharding.data_parallel_size(self.mesh)

  @property
  def num_compiled(self) -> int:
    """Shapes (rows, padded prompt length, cache length, Sampling) compiled so far."""
    return len(self._executables)

  def _context(self):
    """The mesh and logical-axis rules that tracing the model needs (nothing without a mesh)."""
    if self.mesh is None:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _sharding(self, *spec) -> NamedSharding | None:
    """NamedSharding(mesh, PartitionSpec(*spec)); None without a mesh (jit places the arrays)."""
    return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec(*spec))

  def _cache_shardings(self, shapes: Any) -> Any:
    # Per-layer leaves are [num_groups, batch, ...]; the write index [num_groups] is replicated.
    return jax.tree_util.tree_map(lambda s: self._sharding(None, self._batch_axes) if s.ndim >= 2 else
                                  self._sharding(), shapes)

  def _compile(self, batch: int, prompt_len: int, cache_len: int, sampling: Sampling, params: Any) -> tuple:
    """(new cache, prefill, step) executables for this shape, compiled on first use."""
    key = (batch, prompt_len, cache_len, sampling)
    if key in self._executables:
      return self._executables[key]
    model = self.model
    shapes = _cache_shapes(model, batch, cache_len)
    cache_shardings = self._cache_shardings(shapes)
    rows, replicated = self._sharding(self._batch_axes), self._sharding()

    def new_cache():
      return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def prefill(params, cache, tokens, segment_ids, positions, rng):
      logits, cache = decode(model, params, cache, tokens, segment_ids, positions)
      return choose_tokens(logits[:, -1], jax.random.fold_in(rng, 0), sampling), cache

    def step(params, cache, token, lengths, index, rng):
      """Feeds new token `index - 1` of each row (at position length + index - 1); draws token `index`."""
      positions = (lengths + index - 1)[:, None]
      logits, cache = decode(model, params, cache, token[:, None], jnp.ones_like(positions), positions)
      return choose_tokens(logits[:, 0], jax.random.fold_in(rng, index), sampling), index + 1, cache

    def jit(fn, in_shardings, out_shardings, **kwargs):
      if self.mesh is None:
        return jax.jit(fn, **kwargs)
      return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, **kwargs)

    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    ps = self._param_shardings
    with self._context():
      new_cache = jit(new_cache, None, cache_shardings).lower().compile()
      tokens = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32)
      prefill = jit(prefill, (ps, cache_shardings, rows, rows, rows, replicated), (replicated, cache_shardings),
                    donate_argnums=1).lower(params, shapes, tokens, tokens, tokens, rng).compile()
      vector, scalar = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
      step = jit(step, (ps, cache_shardings, replicated, replicated, replicated, replicated),
                 (replicated, replicated, cache_shardings),
                 donate_argnums=1).lower(params, shapes, vector, vector, scalar, rng).compile()
    self._executables[key] = (new_cache, prefill, step)
    return self._executables[key]

  def _put(self, array: np.ndarray, target: NamedSharding | None) -> jax.Array:
    """`array`, which every process holds in full, on the devices."""
    return jnp.asarray(array) if target is None else sharding.from_full_host_array(array, target)

  def generate(self, params: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int | None,
               sampling: Sampling = Sampling(), seed: int = 0, pad_id: int = 0) -> Generation:
    """Continues each prompt (token ids, BOS included if the model was trained with it) by up to `max_new_tokens`.

    A row stops at its first EOS (`eos_id`; None = never); all stop after `max_new_tokens`, or
    when the longest prompt and the tokens fed after it fill the model's context
    (model.max_seq_len). The draws depend on `seed` and on the batch (its rows and padding).

    Args:
      params: the model's parameters (laid out for the mesh if not already).
      pad_id: the id written where prompts are padded (never attended).

    Raises:
      ValueError: no prompts, an empty prompt, one longer than model.max_seq_len, an id outside
        the vocabulary, or max_new_tokens < 1.
    """
    cfg = self.model.cfg
    if not prompts:
      raise ValueError("no prompts to continue")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for i, prompt in enumerate(prompts):
      if not prompt:
        raise ValueError(f"prompt {i + 1} is empty")
      if len(prompt) > cfg.max_seq_len:
        raise ValueError(f"prompt {i + 1} has {len(prompt)} tokens but the model's context (model.max_seq_len) "
                         f"is {cfg.max_seq_len} tokens")
      if min(prompt) < 0 or max(prompt) >= cfg.vocab_size:
        raise ValueError(f"prompt {i + 1} has token ids outside the vocabulary [0, {cfg.vocab_size})")
    num_prompts, prompt_len = len(prompts), max(len(p) for p in prompts)
    dp = self.data_parallel_size
    batch = -(-num_prompts // dp) * dp
    # The last new token is drawn, never fed: the cache holds the prompt and the new tokens before it.
    cache_len = min(prompt_len + max_new_tokens - 1, cfg.max_seq_len)
    limit = cache_len - prompt_len + 1  # new tokens per row at most

    tokens = np.full((batch, prompt_len), pad_id, np.int32)
    segment_ids = np.zeros((batch, prompt_len), np.int32)
    positions = np.zeros((batch, prompt_len), np.int32)
    lengths = np.ones(batch, np.int32)  # rows added for the mesh hold one pad token, and are dropped
    segment_ids[num_prompts:, -1] = 1
    for row, prompt in enumerate(prompts):
      n = len(prompt)
      tokens[row, prompt_len - n:] = prompt
      segment_ids[row, prompt_len - n:] = 1
      positions[row, prompt_len - n:] = np.arange(n)
      lengths[row] = n

    if self._param_shardings is not None:
      params = jax.device_put(params, self._param_shardings)
    start = time.perf_counter()
    new_cache, prefill, step = self._compile(batch, prompt_len, cache_len, sampling, params)
    compiled = time.perf_counter()
    rows, replicated = self._sharding(self._batch_axes), self._sharding()
    rng = self._put(np.asarray(jax.random.PRNGKey(seed), np.uint32), replicated)
    token, cache = prefill(params, new_cache(), self._put(tokens, rows), self._put(segment_ids, rows),
                           self._put(positions, rows), rng)
    lengths_device = self._put(lengths, replicated)
    index = self._put(np.ones((), np.int32), replicated)

    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = np.arange(batch) >= num_prompts
    drawn, steps, prefilled = 0, 0, None
    while True:
      # The next step is queued before this token reaches the host, so the device never waits on the
      # host; when every row has stopped, that one queued step is wasted.
      if drawn + 1 < limit:
        next_token, index, cache = step(params, cache, token, lengths_device, index, rng)
        steps += 1
      values = np.asarray(jax.device_get(token))
      if prefilled is None:
        prefilled = time.perf_counter()
      for row in np.flatnonzero(~done):
        if values[row] == eos_id:
          done[row] = True
        else:
          outputs[row].append(int(values[row]))
      drawn += 1
      if drawn >= limit or done.all():
        break
      token = next_token
    jax.block_until_ready(cache)
    finished = time.perf_counter()
    outputs = outputs[:num_prompts]
    return Generation(tokens=outputs, prompt_tokens=sum(len(p) for p in prompts),
                      new_tokens=sum(len(o) for o in outputs), compile_seconds=compiled - start,
                      prefill_seconds=prefilled - compiled, decode_seconds=finished - prefilled, decode_steps=steps)


def sample(next_token: Callable, params: Any, prompt: list[int], *, window: int, batch_size: int,
           max_new_tokens: int, eos_id: int, rng: jax.Array, put: Callable[[np.ndarray], Any]) -> list[list[int]]:
  """Samples `batch_size` continuations of `prompt` (independent draws).

  Args:
    next_token: jitted function from `make_next_token_fn`.
    window: the fixed token window; generation stops when it is full.
    put: places a [batch, window] host array on the devices (with the batch sharding).

  Returns:
    `batch_size` lists of new token ids, each ending before EOS if EOS was drawn.
  """
  if not prompt or len(prompt) >= window:
    raise ValueError(f"prompt must have 1 to {window - 1} tokens, got {len(prompt)}")
  tokens = np.zeros((batch_size, window), np.int32)
  tokens[:, :len(prompt)] = prompt
  done = np.zeros(batch_size, bool)
  length = len(prompt)
  while length < min(window, len(prompt) + max_new_tokens) and not done.all():
    rng, step_rng = jax.random.split(rng)
    new = np.asarray(jax.device_get(next_token(params, put(tokens), length, step_rng)))
    tokens[:, length] = np.where(done, eos_id, new)
    done |= new == eos_id
    length += 1
  outputs = []
  for row in tokens[:, len(prompt):length].tolist():
    outputs.append(row[:row.index(eos_id)] if eos_id in row else row)
  return outputs


def _continuation(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
  """The text `new_ids` add after the prompt (decoded together, so a leading space survives)."""
  head, whole = tokenizer.decode(prompt_ids), tokenizer.decode(prompt_ids + new_ids)
  return whole[len(head):] if whole.startswith(head) else tokenizer.decode(new_ids)


def _rate(tokens: int, seconds: float) -> str:
  return f"{tokens / seconds:,.1f} tokens/s" if seconds > 0 else "- tokens/s"


def main(argv: Sequence[str] | None = None) -> int:
  """Continues each --prompt with the model of --run; returns the exit status (2 for an error, with its message)."""
  parser = argparse.ArgumentParser(prog="python -m lm.generate", description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", required=True, help="Run directory written by lm.launch.")
  parser.add_argument("--step", type=int, default=None, help="Checkpoint step (default: the newest sound one).")
  parser.add_argument("--prompt", action="append", required=True,
                      help="Text to continue (repeat for a batch); encoded with BOS first.")
  parser.add_argument("--max_new_tokens", type=int, default=64, help="New tokens per prompt at most.")
  parser.add_argument("--temperature", type=float, default=None,
                      help="Softmax temperature, 0 = greedy (default: the run's eval.sample_temperature).")
  parser.add_argument("--top_k", type=int, default=None,
                      help="Draw among the k most likely tokens, 0 = all (default: the run's eval.sample_top_k).")
  parser.add_argument("--top_p", type=float, default=1.0,
                      help="Nucleus sampling: the smallest set of most likely tokens holding this probability.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the draws.")
  args = parser.parse_args(argv)

  from lm import config as config_lib  # pylint: disable=import-outside-toplevel
  from lm import load  # pylint: disable=import-outside-toplevel  # load imports train, which imports this module

  try:
    run = load.load_run(args.run, args.step, log=lambda message: print(message, file=sys.stderr))
    if run.config.model.objective != "causal":
      raise ValueError(f"{run.run_dir} trains model.objective {run.config.model.objective!r}: only a causal model "
                       "continues text")
    evaluation = run.config.eval
    sampling = Sampling(evaluation.sample_temperature if args.temperature is None else args.temperature,
                        evaluation.sample_top_k if args.top_k is None else args.top_k, args.top_p)
    tokenizer = run.tokenizer
    prompts = [[tokenizer.bos_id] + tokenizer.encode(text) for text in args.prompt]
    generator = Generator(run.trainer.model, run.trainer.mesh, run.trainer.rules)
    result = generator.generate(run.params, prompts, max_new_tokens=args.max_new_tokens, eos_id=tokenizer.eos_id,
                                sampling=sampling, seed=args.seed, pad_id=tokenizer.pad_id)
  except (config_lib.ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  how = ("greedy" if sampling.temperature == 0 else
         f"temperature {sampling.temperature}, top_k {sampling.top_k}, top_p {sampling.top_p}, seed {args.seed}")
  print(f"{run.run_dir} step {run.step}: {how}")
  for index, (text, ids, new) in enumerate(zip(args.prompt, prompts, result.tokens)):
    print(f"--- prompt {index + 1} ({len(ids)} tokens, {len(new)} new)")
    print(text + _continuation(tokenizer, ids[1:], new))
  seconds = result.prefill_seconds + result.decode_seconds
  decoded = result.new_tokens - sum(1 for new in result.tokens if new)  # the first of each came from the prefill
  print(f"--- {result.new_tokens} new tokens in {seconds:.2f}s ({_rate(result.new_tokens, seconds)}): "
        f"prefill {result.prompt_tokens} prompt tokens in {result.prefill_seconds:.3f}s "
        f"({_rate(result.prompt_tokens, result.prefill_seconds)}), decode {result.decode_steps} steps in "
        f"{result.decode_seconds:.3f}s ({_rate(decoded, result.decode_seconds)}); "
        f"compile {result.compile_seconds:.1f}s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
