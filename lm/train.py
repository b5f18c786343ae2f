"""Training: the train state, the pure jitted step functions, and the loop around them.

`Trainer` holds the pure functions of one run (`init_state`, `train_step`, `eval_step`,
`next_token`), each jitted with explicit shardings derived from the logical-axis rules.
`run(config)` is the imperative shell: data, checkpoints (resume, integrity, preemption),
the loss guard's rollbacks, per-step metrics, evaluation, the gradient noise scale, samples.

The guard's verdict is computed inside `train_step` (see lm/guard.py): a skipped update
never leaves the device, and the host learns of it when it reads the step's metrics, one
step late, which is when a rollback happens.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import shutil
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs.tokenize import base as tokenize_base
from data import corpus
from data import loader
from data import shards
from data import tokenizer as tokenizer_lib
from lm import checkpoint as checkpoint_lib
from lm import config as config_lib
from lm import evaluate as evaluate_lib
from lm import generate as generate_lib
from lm import guard as guard_lib
from lm import initialize
from lm import metrics as metrics_lib
from lm import model as model_lib
from lm import objectives
from lm import optim
from lm import params as params_lib
from lm import process
from lm import run_dir as run_dir_lib
from lm import sharding


class RunStopped(RuntimeError):
  """The run cannot go on: e.g. the loss guard rolled back guard.max_rollbacks times already."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # float32 (model.param_dtype) parameter tree
  opt_state: Any  # optax state (AdamW moments in float32)
  rng: jax.Array  # uint32[2] base key; step k uses fold_in(rng, k)
  guard: guard_lib.GuardState  # loss / gradient-norm history of the spike guard, learning-rate scale of rollbacks


def batch_losses(params, model: nn.Module, batch: dict[str, jax.Array],
                 with_logits_z: bool = False) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(`objectives.summed_losses` of the model on `batch`, the model's MoE statistics ({} if dense)).

  `batch` is already prepared for the objective (see `objectives.prepare_batch`).
  """
  logits, moe = model.apply({"params": params}, batch["inputs"], batch["segment_ids"], batch["positions"])
  return objectives.summed_losses(logits, batch["targets"], batch["loss_mask"], with_logits_z), moe


def layer_gradient_norms(grads: Any, model_config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Global norm of each layer's gradients ("grad_norm/layer_07") and of each other top-level parameter group."""
  norms = {}
  size = model_lib.group_size(model_config)
  for position in range(size):
    leaves = jax.tree_util.tree_leaves(grads["blocks"][f"layer_{position}"])
    # Leading axis: the layer's index within the scan over groups (layer = index * size + position).
    squares = sum(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim))) for x in leaves)
    for index in range(model_config.num_layers // size):
      norms[f"grad_norm/layer_{index * size + position:02d}"] = jnp.sqrt(squares[index])
  for name, subtree in grads.items():
    if name != "blocks":
      norms[f"grad_norm/{name}"] = optax.global_norm(subtree)
  return norms


def moe_metrics(moe: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Scalars logged for MoE models: auxiliary losses, dropped share and the busiest expert's load."""
  if not moe:
    return {}
  return {"train/moe_load_balance_loss": moe["load_balance_loss"], "train/moe_router_z_loss": moe["router_z_loss"],
          "train/moe_dropped_tokens": moe["dropped_tokens"],
          "train/moe_dropped_fraction": moe["dropped_tokens"] / jnp.maximum(moe["routed_tokens"], 1.0),
          "train/moe_max_expert_load": jnp.max(moe["expert_load"])}


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The jitted pure functions of a run and the shardings they were compiled with."""

  model: nn.Module
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: Any  # TrainState of NamedShardings
  batch_sharding: jax.sharding.NamedSharding
  learning_rate: optax.Schedule
  init_state: Callable[[jax.Array], TrainState]  # rng -> sharded state
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]  # donates its state argument
  eval_step: Callable[[Any, dict], tuple[jax.Array, jax.Array]]  # (params, batch) -> (summed loss, tokens)
  next_token: Callable  # (params, tokens [batch, seq], length, rng) -> [batch] int32, config.eval sampling
  token_scores: Callable  # (params, batch) -> (target log-probabilities [batch, seq], target is the argmax)
  noise_scale_sums: Callable  # (params, batch) -> squared gradient norms of the batch's halves and of all of it
  abstract_state: TrainState  # ShapeDtypeStructs with shardings, never allocated: the target of a restore
  param_axes: Any  # parameter tree of PartitionSpecs of logical axis names ("vocab", "embed", "layers", ...)


# XLA:CPU's oneDNN matmuls hand their runtime back to a pool just after a run completes, and destroying the
# executable inside that window aborts the process (object_pool.h: "available_.size() == num_created_"). Seen when
# a function was dropped right after its result was read, on a loaded machine. The last Trainers built stay
# referenced here, so a dropped Trainer's executables are destroyed while a later one is built, long after its
# last run.
_RECENT_ONEDNN_TRAINERS: collections.deque[Trainer] = collections.deque(maxlen=4)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Trainer:
  """Builds the model, optimizer and jitted step functions of `config` on `mesh`."""
  config = config_lib.for_platform(config, mesh.devices.flat[0].platform)
  model = model_lib.from_config(config.model)
  rules = sharding.rules(config.mesh)
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  schedule = optim.learning_rate_schedule(config.optim, config.train.steps)

  init_boxed = _init_function(config, model, optimizer)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_boxed, jax.random.PRNGKey(0))
  state_shardings = sharding.logical_shardings(nn.get_partition_spec(boxed), mesh, rules)
  abstract_state = checkpoint_lib.abstract_like(nn.meta.unbox(boxed), state_shardings)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  num_microbatches = config.train.microbatches
  microbatch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *batch_sharding.spec))

  def microbatches(batch: dict) -> dict:
    """[batch, seq] -> [microbatches, batch / microbatches, seq]; microbatch i takes rows i, i + m, i + 2m, ...
    so that every device holds an equal share of every microbatch."""
    def split(x):
      x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, microbatch_sharding)
    return {k: split(v) for k, v in batch.items()}

  def gradients(params, batch: dict):
    """(loss, summed losses, MoE statistics, float32 gradients) of the prepared `batch`, accumulated over
    `train.microbatches` microbatches; the same update as the whole batch at once."""
    batch_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))

    def loss_fn(p, micro):
      sums, moe = batch_losses(p, model, micro, with_logits_z=config.model.logits_z_loss_weight > 0)
      return objectives.total_loss(sums, moe, config.model, batch_tokens, num_microbatches), (sums, moe)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
      (loss, (sums, moe)), grads = grad_fn(params, batch)
      return loss, sums, moe, grads

    def like_params(grads):  # the float32 sum is laid out as the parameters, never gathered
      return jax.lax.with_sharding_constraint(grads, state_shardings.params)

    def accumulate(carry, micro):
      (loss, (sums, moe)), grads = grad_fn(params, micro)
      grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)
      loss, sums, moe, grads = jax.tree_util.tree_map(jnp.add, carry, (loss, sums, moe, grads))
      return (loss, sums, moe, like_params(grads)), None

    split = microbatches(batch)
    (loss, (sums, moe)), grads = jax.eval_shape(grad_fn, params, jax.tree_util.tree_map(lambda x: x[0], split))
    loss, sums, moe, grads = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), (loss, sums, moe, grads))
    (loss, sums, moe, grads), _ = jax.lax.scan(accumulate, (loss, sums, moe, like_params(grads)), split)
    for key in ("load_balance_loss", "router_z_loss", "expert_load"):  # means, not sums, over microbatches
      if key in moe:
        moe[key] = moe[key] / num_microbatches
    return loss, sums, moe, grads

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    batch = objectives.prepare_batch(batch, config.model, rng)
    loss, sums, moe, grads = gradients(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    scale = state.guard.learning_rate_scale  # lowered by rollbacks; 1 otherwise
    updates = jax.tree_util.tree_map(lambda u: (u * scale).astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    train_loss, grad_norm = sums["cross_entropy"] / tokens, optax.global_norm(grads)
    verdict = guard_lib.check(state.guard, train_loss, grad_norm, config.guard)
    anomaly = verdict["guard/anomaly"] > 0
    if config.guard.policy != "log":  # skip and rollback both drop the anomalous update here
      params = guard_lib.select(anomaly, state.params, params)
      opt_state = guard_lib.select(anomaly, state.opt_state, opt_state)
    guard = guard_lib.record(state.guard, train_loss, grad_norm, accepted=~anomaly)
    metrics = {"train/loss": train_loss, "train/total_loss": loss, "train/grad_norm": grad_norm,
               "train/learning_rate": schedule(state.step) * scale,
               "train/update_ratio": optax.global_norm(updates) / optax.global_norm(state.params),
               "train/target_tokens": sums["tokens"], **guard_lib.window_statistics(guard), **verdict,
               "guard/learning_rate_scale": scale, "guard/rollbacks": state.guard.rollbacks.astype(jnp.float32),
               **layer_gradient_norms(grads, config.model), **moe_metrics(moe)}
    if "logits_z" in sums:
      metrics["train/logits_z_loss"] = sums["logits_z"] / tokens
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, guard=guard), metrics

  def noise_scale_sums(params, batch):
    """Squared gradient norms for the gradient noise scale: of each half of the batch's rows and of the whole.

    Returns float32 scalars: "small" (mean of the halves' |g|^2), "big" (|g|^2 of the token-weighted
    mean of the halves, the whole batch's gradient) and the target tokens "small_tokens", "big_tokens".
    """
    batch = objectives.prepare_batch(batch, config.model, jax.random.PRNGKey(0))
    rows = batch["loss_mask"].shape[0]
    first = (jnp.arange(rows) < rows // 2)[:, None]

    def half(mask):
      masked = dict(batch, loss_mask=batch["loss_mask"] * mask.astype(batch["loss_mask"].dtype))
      _, sums, _, grads = gradients(params, masked)
      return grads, sums["tokens"]

    (g1, t1), (g2, t2) = half(first), half(~first)
    whole = jax.tree_util.tree_map(lambda a, b: (a * t1 + b * t2) / (t1 + t2), g1, g2)
    square = lambda tree: optax.global_norm(tree) ** 2  # noqa: E731
    return {"small": (square(g1) + square(g2)) / 2, "big": square(whole), "small_tokens": (t1 + t2) / 2,
            "big_tokens": t1 + t2}

  def eval_step(params, batch):
    # The masked objective corrupts each validation batch the same way at every evaluation, and
    # different batches differently: the key is derived from the batch's own tokens.
    rng = jax.random.fold_in(jax.random.PRNGKey(config.eval.masked_lm_seed), jnp.sum(batch["inputs"]))
    sums, _ = batch_losses(params, model, objectives.prepare_batch(batch, config.model, rng))
    return sums["cross_entropy"], sums["tokens"]

  def forward(params, inputs, segment_ids, positions):
    return model.apply({"params": params}, inputs, segment_ids, positions)[0]

  def in_context(fn):
    """`fn` called inside the mesh and logical-rule context that tracing the model needs; its `lower`
    (compile without running: compile times, HLO text) too."""
    @functools.wraps(fn)
    def wrapped(*args):
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return fn(*args)

    def lower(*args):
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return fn.lower(*args)
    wrapped.lower = lower
    return wrapped

  next_token = generate_lib.make_next_token_fn(forward, config.eval.sample_temperature, config.eval.sample_top_k)
  options = process.compiler_options(config.train.cpu_dot_library, mesh.devices.flat[0].platform)
  jit = functools.partial(jax.jit, compiler_options=options)
  trainer = Trainer(
      model=model, mesh=mesh, rules=rules, state_shardings=state_shardings, batch_sharding=batch_sharding,
      learning_rate=schedule,
      init_state=in_context(jit(lambda rng: nn.meta.unbox(init_boxed(rng)), out_shardings=state_shardings)),
      train_step=in_context(jit(train_step, in_shardings=(state_shardings, batch_sharding),
                                out_shardings=(state_shardings, replicated), donate_argnums=0)),
      eval_step=in_context(jit(eval_step, in_shardings=(state_shardings.params, batch_sharding),
                               out_shardings=replicated)),
      next_token=in_context(jit(next_token, in_shardings=(state_shardings.params, batch_sharding, None, None),
                                out_shardings=replicated)),
      token_scores=in_context(jit(evaluate_lib.make_token_scores(forward),
                                  in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated)),
      noise_scale_sums=in_context(jit(noise_scale_sums, in_shardings=(state_shardings.params, batch_sharding),
                                      out_shardings=replicated)),
      abstract_state=abstract_state,
      param_axes=nn.get_partition_spec(boxed).params,
  )
  if options is not None:
    _RECENT_ONEDNN_TRAINERS.append(trainer)
  return trainer


def _init_function(config: ml_collections.ConfigDict, model: nn.Module,
                   optimizer: optax.GradientTransformation) -> Callable[[jax.Array], TrainState]:
  """rng -> the initial TrainState with boxed (logically partitioned) parameters."""

  def init_boxed(rng):
    dummy = jnp.zeros((1, config.data.seq_len), jnp.int32)
    params = model.init(rng, dummy, dummy, dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng,
                      guard=guard_lib.init(config.guard.window))

  return init_boxed


def state_layout(config: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every leaf of the train state of `config` as name -> (shape, dtype); shapes only, nothing allocated."""
  model = model_lib.from_config(config.model)
  init = _init_function(config, model, optim.make_optimizer(config.optim, config.train.steps))
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  return {name: (tuple(leaf.shape), str(leaf.dtype)) for name, leaf in checkpoint_lib.leaf_names(abstract).items()}


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class RunData:
  tokenizer: tokenizer_lib.Tokenizer
  tokens_dir: str  # the token shards read (data.tokens_dir, or RUN_DIR/tokens written at launch)
  stream: loader.Stream | loader.StagedStream  # the training batches as a function of the step
  validation_rows: dict[str, dict[str, np.ndarray]]  # source -> its fixed validation rows ([rows, seq_len] int32)
  unigram_entropy: float  # nats / token of all validation targets' unigram distribution


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _tokenize_at_launch(config: ml_collections.ConfigDict, run_dir: str) -> str:
  """Tokenizes data.path (or the embedded corpus) into RUN_DIR/tokens once; returns the directory.

  The tokenizer is trained on the training split only; shards use the defaults of
  configs/tokenize/base.py. A relaunch finds both and reuses them.
  """
  tokens_dir = os.path.join(run_dir, "tokens")
  tokenizer_dir = os.path.join(run_dir, "tokenizer")
  if os.path.exists(os.path.join(tokens_dir, shards.MANIFEST)):
    return tokens_dir
  if jax.process_index() == 0:
    start = time.time()
    train_docs, validation_docs = corpus.load(config.data.path, config.data.validation_fraction, config.data.split_seed)
    tokenizer_lib.train_or_load(train_docs, config.model.vocab_size, tokenizer_dir, config.data.tokenizer_max_sentences,
                                config.data.split_seed)
    defaults = tokenize_base.get_config().shards
    shards.write(train_docs + validation_docs, tokenizer_dir, tokens_dir,
                 validation_fraction=config.data.validation_fraction, split_seed=config.data.split_seed,
                 record_tokens=defaults.record_tokens, docs_per_shard=defaults.docs_per_shard,
                 num_workers=defaults.num_workers, chunk_docs=defaults.chunk_docs,
                 inputs=shards.input_files([config.data.path]), log=lambda _: None)
    _log(f"data: tokenized {config.data.path or 'the embedded corpus'} into {tokens_dir} "
         f"({time.time() - start:.1f}s)")
  _sync("tokenized at launch")
  return tokens_dir


def prepare_data(config: ml_collections.ConfigDict, run_dir: str) -> RunData:
  """Token shards (written at launch from data.path, or data.tokens_dir) -> the mixture stream and validation rows.

  Raises:
    ConfigError: the tokens, their tokenizer or the mixture do not fit the config (names key and file).
  """
  start = time.time()
  d = config.data
  tokenizer_dir = os.path.join(run_dir, "tokenizer")
  reused = tokenizer_lib.exists(tokenizer_dir)
  try:
    if d.tokens_dir:
      tokens_dir = d.tokens_dir
      manifest = shards.load_manifest(tokens_dir)
      if jax.process_index() == 0 and not tokenizer_lib.exists(tokenizer_dir):
        shutil.copytree(os.path.join(tokens_dir, shards.TOKENIZER_DIR), tokenizer_dir)
      _sync("tokenizer copied")
    else:
      tokens_dir = _tokenize_at_launch(config, run_dir)
      manifest = shards.load_manifest(tokens_dir)
    if manifest["tokenizer"]["vocab_size"] != config.model.vocab_size:
      raise config_lib.ConfigError(
          f"{tokens_dir} was tokenized with {manifest['tokenizer']['vocab_size']} pieces but config "
          f"model.vocab_size is {config.model.vocab_size}; use the same vocab_size")
    # The run's tokenizer (kept in the run dir from its first launch) must be the one the shards were written with.
    tokens = shards.open_tokens(tokens_dir, tokenizer_dir=tokenizer_dir, verify_checksums=d.verify_checksums)
    tokenizer = tokenizer_lib.load(tokenizer_dir)
    seq_len, batch_size = d.seq_len, config.train.global_batch_size
    train_splits = {name: tokens.splits[name]["train"] for name in tokens.sources}
    stages = config_lib.context_stages(config)
    streams = [loader.make_stream(
        train_splits, seq_len=stage.data.seq_len, global_batch_size=stage.train.global_batch_size,
        seed=d.shuffle_seed, pad_id=tokenizer.pad_id, total_steps=config.train.steps, mixture=d.mixture,
        temperature=d.mixture_temperature, epochs=d.mixture_epochs, curriculum=d.curriculum,
        replay_sources=d.replay_sources, replay_fraction=d.replay_fraction)
        for _, stage in stages]
    stream = streams[0] if len(streams) == 1 else loader.StagedStream(streams, [start for start, _ in stages])
  except (shards.ShardError, loader.MixtureError) as e:
    raise config_lib.ConfigError(str(e)) from None
  # Each source's validation loss and the unigram entropy it is compared with are measured on the same rows.
  validation_rows = {
      name: loader.evaluation_rows(tokens.splits[name]["validation"], seq_len=seq_len, pad_id=tokenizer.pad_id,
                                   max_rows=config.eval.max_batches * batch_size, seed=d.split_seed)
      for name in tokens.sources if tokens.splits[name]["validation"].num_documents}
  if not validation_rows:
    raise config_lib.ConfigError(f"{tokens_dir} has no validation documents in any source; write it with "
                                 "shards.validation_fraction > 0")
  every_row = loader.concatenate_rows(list(validation_rows.values()))
  _log(f"data: {tokens_dir}: {sum(s.num_documents for s in train_splits.values()):,} train documents, "
       f"{sum(int(s.lengths.sum()) for s in train_splits.values()):,} train ids in {len(train_splits)} sources; "
       f"{int(every_row['loss_mask'].sum()):,} validation tokens evaluated ({', '.join(validation_rows)}); "
       f"tokenizer {'reused' if reused else 'trained' if not d.tokens_dir else 'copied from ' + tokens_dir} "
       f"({tokenizer.vocab_size} pieces); {time.time() - start:.1f}s")
  _log(f"mixture over {config.train.steps} steps (share of rows, epochs of each source at the end):\n"
       f"{stream.plan_table(config.train.steps)}")
  return RunData(tokenizer, tokens_dir, stream, validation_rows,
                 loader.unigram_entropy(every_row, config.model.vocab_size))


def _samples(config, trainer: Trainer, params, tokenizer: tokenizer_lib.Tokenizer, step: int) -> str:
  """Each fixed prompt of eval.sample_prompts followed by one sampled continuation, as one text block."""
  texts = []
  for index, prompt in enumerate(config.eval.sample_prompts):
    continuations = generate_lib.sample(
        trainer.next_token, params, [tokenizer.bos_id] + tokenizer.encode(prompt), window=config.data.seq_len,
        batch_size=sharding.data_parallel_size(trainer.mesh), max_new_tokens=config.eval.sample_tokens,
        eos_id=tokenizer.eos_id, rng=jax.random.fold_in(jax.random.PRNGKey(config.train.seed + index), step),
        put=lambda array: sharding.from_full_host_array(array, trainer.batch_sharding))
    texts.append(prompt + tokenizer.decode(continuations[0]))
  return "\n---\n".join(texts)


class _Preemption:
  """Whether the job has been told to stop (SIGTERM, or a preemption notice): then save and exit.

  One process installs a SIGTERM handler. In a multi-process job JAX's preemption service
  (started by jax.distributed.initialize) receives the notice on any host and agrees on the
  step at which every process saves; it must be asked once per step with an increasing count.
  """

  def __init__(self):
    self.signal = None  # the signal received, single-process
    self._previous = None
    self._calls = 0  # the preemption service's increasing count
    self._requested = False
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. run() called from a worker thread): no handler
        pass

  def _handle(self, signum, frame) -> None:
    del frame
    self.signal = signal.Signals(signum).name

  def requested(self) -> bool:
    """Asked once per loop iteration; once true, stays true (a rollback may come between notice and save)."""
    if not self._requested:
      self._calls += 1
      if jax.process_count() == 1:
        self._requested = self.signal is not None
      else:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        try:
          self._requested = multihost_utils.reached_preemption_sync_point(self._calls)
        except RuntimeError:  # the preemption service is off (jax_enable_preemption_service): no notices
          self._requested = False
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _anomaly_reason(metrics: dict[str, float]) -> str:
  if metrics["guard/nonfinite"]:
    return "non-finite loss or gradient"
  if metrics["guard/loss_spike"]:
    return f"loss spike: {metrics['train/loss']:.4f} > {metrics['guard/loss_threshold']:.4f}"
  return f"gradient-norm spike: {metrics['train/grad_norm']:.4g} > {metrics['guard/grad_norm_threshold']:.4g}"


def run(config: ml_collections.ConfigDict,
        batch_hook: Callable[[int, dict], dict] | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run of `config`; returns the final step, validation loss, samples and guard events.

  Args:
    config: the run's config (validated here).
    batch_hook: (batch index, host batch) -> host batch, applied to every batch before the step
      (fault injection for tests of the guard; None in real runs).
  """
  config = config_lib.for_platform(config, jax.default_backend())
  config_lib.validate(config, jax.device_count(), jax.process_count())
  is_main = jax.process_index() == 0
  run_dir = os.path.abspath(config.train.run_dir)
  source = None
  if config.train.init_from and initialize.has_checkpoints(run_dir):
    # A relaunch resumes its own checkpoints: the source is not read again (it may be gone), and the
    # peak learning rate stays the one resolved at the first launch.
    config = initialize.keep_learning_rate(config, run_dir)
  elif config.train.init_from:
    source = initialize.find_source(config.train.init_from, config)
    config = initialize.resolve_learning_rate(config, source)
  changed = run_dir_lib.prepare(config, is_main, state_layout)
  if changed:
    _log(f"config changed since the last launch of this run: {run_dir_lib.describe(changed)}")
  mesh = sharding.make_mesh(config.mesh)
  _log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
       f"{jax.process_count()} process(es); run dir {run_dir}")
  if source is not None and is_main:
    initialize.place_tokenizer(config, source, run_dir)
  _sync("tokenizer placed")
  data = prepare_data(config, run_dir)
  tokenizer, validation_rows = data.tokenizer, data.validation_rows
  if source is not None:
    initialize.check_tokenizer(config, source, run_dir, data.tokens_dir)
  if config.model.objective == "masked" and tokenizer.mask_id != tokenizer_lib.MASK_ID:
    raise config_lib.ConfigError(
        f"model.objective 'masked' needs a tokenizer with a <mask> piece (id {tokenizer_lib.MASK_ID}); "
        f"the one in {run_dir}/tokenizer has none: use a new run dir")
  seq_len, global_batch_size = config.data.seq_len, config.train.global_batch_size

  data_iterator = loader.TrainIterator(
      data.stream, step=0, process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=config.data.num_workers, prefetch=config.data.prefetch_batches)

  # One trainer per context stage (its row length and RoPE scaling; the state's layout is the same in all).
  stages = config_lib.context_stages(config)
  stage_starts = [start for start, _ in stages]
  trainers = [build(stage, mesh) for _, stage in stages]
  trainer, stage_config = trainers[0], config

  def stage_of(step: int) -> int:
    """The context stage of step (or batch) `step`, 0-based."""
    return loader.stage_index(stage_starts, step)

  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), config.checkpoint.every_steps,
                                             config.checkpoint.max_to_keep, config.checkpoint.keep_every_steps)
  try:
    latest, state = checkpointer.restore_latest(trainer.abstract_state, data_iterator, _log)
  except (checkpoint_lib.CheckpointError, ValueError) as e:
    raise config_lib.ConfigError(str(e)) from None
  if latest is not None:
    if data_iterator.step < int(state.step):
      raise RuntimeError(f"checkpoint {latest}: the loader position ({data_iterator.step}) is behind the train step "
                         f"({int(state.step)})")
    _log(f"resumed from step {latest} ({checkpointer.step_dir(latest)})")
  else:
    state = trainer.init_state(jax.random.PRNGKey(config.train.seed))
    if source is not None:
      state = state.replace(params=initialize.load_params(config, source, trainer, state.params, _log))
      _log(f"learning rate: warmup {config.optim.warmup_steps} steps to {config.optim.peak_learning_rate:.3g}"
           + (f" ({config.train.init_learning_rate_fraction:g} x the source's peak)"
              if config.train.init_learning_rate_fraction else "") + f", then decay over {config.train.steps} steps")
  compute = params_lib.training_compute(config)
  flops_per_token = compute["flops_per_token"]
  stage_flops = [flops_per_token] + [params_lib.training_compute(stage)["flops_per_token"] for _, stage in stages[1:]]

  def flops_before(step: int) -> float:
    """FLOPs per token summed over steps 0 .. step - 1, each at its stage's count."""
    ends = stage_starts[1:] + [max(step, stage_starts[-1])]
    return sum(f * max(0, min(step, end) - start) for f, start, end in zip(stage_flops, stage_starts, ends))
  if len(stages) > 1:  # the full count takes each stage's attention at its row length (tokens per step are equal)
    compute = dict(compute, compute=flops_before(config.train.steps) * global_batch_size * seq_len)
  peak, peak_source = metrics_lib.peak_flops_per_device(config.log)
  if is_main:
    run_dir_lib.record_launch(run_dir, changed, latest, jax.process_count(), mfu_basis={
        "flops_per_token": flops_per_token, "formula": "6N + attention (lm.params.flops_per_token)",
        "peak_flops_per_device": peak, "peak_source": peak_source, "devices": jax.device_count()},
        compute=compute)
  param_count = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  _log(f"model: {param_count:,} parameters")
  layout = params_lib.sharding_report(config, dict(mesh.shape))
  if is_main:
    with open(os.path.join(run_dir, "shardings.txt"), "w") as f:
      f.write(layout + "\n")
  _log("\n".join(layout.splitlines()[-3:]) + f"  (every parameter: {os.path.join(run_dir, 'shardings.txt')})")

  writer = metrics_lib.MetricsWriter(run_dir, enabled=is_main)
  if changed:
    writer.event(int(state.step), "config_changed", changes={k: list(v) for k, v in changed.items()})
  if latest is not None:
    writer.event(latest, "resumed", checkpoint=checkpointer.step_dir(latest), batch=data_iterator.step)
  elif source is not None:
    writer.event(0, "initialized_from", source=source.path, kind=source.kind,
                 peak_learning_rate=config.optim.peak_learning_rate)
  _log(f"compute: N = {compute['params_total']:,.0f} parameters ({compute['params_non_embedding']:,.0f} "
       f"non-embedding), D = {compute['tokens']:,.0f} tokens, C = 6ND = {compute['compute_6nd']:.3e} FLOPs "
       f"(6ND non-embedding {compute['compute_6nd_non_embedding']:.3e}; with attention {compute['compute']:.3e})")
  _log(f"MFU uses {flops_per_token / 1e6:.1f} MFLOP/token (6N + attention) against {peak / 1e9:,.0f} GFLOP/s "
       f"per device ({peak_source})")

  byte_lengths = evaluate_lib.piece_byte_lengths(tokenizer)
  validation_bytes = {name: evaluate_lib.text_bytes(rows, byte_lengths) for name, rows in validation_rows.items()}

  def run_evaluation(step: int) -> float:
    """Validation loss and bits per byte of each source and of all of them (token-weighted); returns the loss."""
    results = evaluate_lib.evaluate_sources(
        trainer.eval_step, state.params, validation_rows, validation_bytes, global_batch_size,
        lambda a: sharding.from_full_host_array(a, trainer.batch_sharding))
    overall = results.pop("all")
    scalars = {"eval/loss": overall["loss"], "eval/perplexity": overall["perplexity"],
               "eval/bits_per_byte": overall["bits_per_byte"]}
    for name, result in results.items():
      scalars[f"eval/{name}/loss"] = result["loss"]
      scalars[f"eval/{name}/bits_per_byte"] = result["bits_per_byte"]
    domains = evaluate_lib.domain_losses(results, config.data.replay_sources)
    for domain, loss in domains.items():
      scalars[f"eval/{domain}/loss"] = loss
    writer.write(step, scalars)
    per_source = ", ".join(f"{name} {result['loss']:.4f}" for name, result in {
        **results, **{domain: {"loss": loss} for domain, loss in domains.items()}}.items())
    _log(f"eval  step {step}: val_loss {overall['loss']:.4f}  perplexity {overall['perplexity']:.2f}  "
         f"bits/byte {overall['bits_per_byte']:.4f}  ({overall['tokens']:,.0f} tokens; {per_source})")
    return overall["loss"]

  def run_tasks(step: int) -> None:
    """Scores the benchmark files of eval.tasks (at most eval.tasks_max_items items each) and logs them."""
    scalars = {}
    for task, path in config.eval.tasks:
      result = evaluate_lib.evaluate_task(
          task, path, tokenizer=tokenizer, token_scores=trainer.token_scores, params=state.params, seq_len=seq_len,
          batch_size=global_batch_size, put=lambda a: sharding.from_full_host_array(a, trainer.batch_sharding),
          shots=config.eval.tasks_shots, seed=config.train.seed, max_items=config.eval.tasks_max_items,
          too_long=config.eval.tasks_too_long)
      for key in ("acc", "acc_norm", "perplexity", "items"):
        if key in result:
          scalars[f"eval/{task}/{key}"] = float(result[key])
      _log(f"eval  step {step}: {evaluate_lib.format_task(result)}")
    writer.write(step, scalars)

  def write_samples(step: int) -> str:
    text = _samples(stage_config, trainer, state.params, tokenizer, step)
    if is_main:
      with open(os.path.join(run_dir, "samples.txt"), "a") as f:
        f.write(f"=== step {step}\n{text}\n")
    writer.write_text(step, "samples", text)
    return text

  total_steps = config.train.steps
  tokens_per_step = global_batch_size * seq_len
  noise_scale = metrics_lib.GradientNoiseScale()
  preemption = _Preemption()
  can_sample = config.model.objective == "causal"  # a masked-LM model does not continue text
  timers = {"data": 0.0, "checkpoint": 0.0, "eval": 0.0}  # seconds since the last step's metrics were read
  last_read = time.perf_counter()
  window: list[dict[str, float]] = []  # per-step scalars since the last progress line
  events: list[dict] = []
  val_loss = None

  def read(metrics_step: int, batch_index: int, metrics: dict) -> dict[str, float]:
    """Reads one step's device metrics (a step late), writes them with timings and memory, reports anomalies."""
    nonlocal last_read, window
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
    flops_per_token = stage_flops[stage_of(metrics_step - 1)]
    now = time.perf_counter()
    seconds = now - last_read
    training_seconds = max(seconds - timers["eval"], 1e-9)  # evaluation and samples are not training time
    scalars.update({
        "perf/step_seconds": seconds, "perf/data_wait_seconds": timers["data"],
        "perf/checkpoint_seconds": timers["checkpoint"], "perf/eval_seconds": timers["eval"],
        "perf/tokens_per_second": tokens_per_step / training_seconds,
        "perf/mfu": flops_per_token * tokens_per_step / training_seconds / (peak * jax.device_count()),
        # Cumulative, so that loss curves can be drawn against compute (C = 6ND and the full count).
        "compute/tokens": metrics_step * tokens_per_step,
        "compute/flops_6nd": 6 * compute["params_total"] * metrics_step * tokens_per_step,
        "compute/flops": flops_before(metrics_step) * tokens_per_step,
        **metrics_lib.memory_scalars()})
    # The realised mixture: closed-form counts of the rows each source gave to batches 0 .. batch_index.
    for name, entry in data.stream.report(batch_index + 1).items():
      scalars[f"data/{name}/share"], scalars[f"data/{name}/epochs"] = entry["share"], entry["epochs"]
    last_read = now
    for key in timers:
      timers[key] = 0.0
    # The spike thresholds are infinite until the guard's window fills: tensorboard takes only finite values.
    writer.write(metrics_step, {k: v for k, v in scalars.items() if math.isfinite(v) or not k.startswith("guard/")})
    if scalars["guard/anomaly"]:
      event = {"event": "skip" if config.guard.policy == "skip" else "anomaly", "step": metrics_step,
               "batch": batch_index, "reason": _anomaly_reason(scalars), "loss": scalars["train/loss"],
               "grad_norm": scalars["train/grad_norm"],
               "update": "applied" if config.guard.policy == "log" else "skipped"}
      events.append(event)
      writer.event(metrics_step, event["event"], **{k: v for k, v in event.items() if k not in ("event", "step")})
      _log(f"guard: step {metrics_step} (batch {batch_index}): {event['reason']}; update {event['update']}")
    window.append(scalars)
    if metrics_step % config.log.every_steps == 0 or metrics_step == total_steps:
      mean = metrics_lib.mean_of(window)
      training = sum(w["perf/step_seconds"] - w["perf/eval_seconds"] for w in window)
      mean["perf/tokens_per_second"] = len(window) * tokens_per_step / max(training, 1e-9)
      mean["perf/mfu"] = (stage_flops[stage_of(metrics_step - 1)] * mean["perf/tokens_per_second"]
                          / (peak * jax.device_count()))
      _log(metrics_lib.progress_line(metrics_step, total_steps, mean, training / len(window)))
      window = []
    return scalars

  def roll_back(anomalous_step: int, batch_index: int, scalars: dict[str, float],
                live: list) -> tuple[TrainState, int] | None:
    """Restores the newest checkpoint before `anomalous_step`, lowers the learning rate and skips the batches
    from the checkpoint's through the anomalous one; (state, its step), or None without such a checkpoint."""
    rollbacks = int(scalars["guard/rollbacks"]) + 1
    if rollbacks > config.guard.max_rollbacks:
      raise RunStopped(f"step {anomalous_step}: {_anomaly_reason(scalars)}; guard.max_rollbacks "
                         f"({config.guard.max_rollbacks}) rollbacks already made: the run is unstable, stopping "
                         f"(events in {os.path.join(run_dir, 'metrics.jsonl')})")
    if checkpointer.all_steps() and min(checkpointer.all_steps()) < anomalous_step:
      for array in jax.tree_util.tree_leaves(live):  # the restore needs their memory; they are abandoned
        if isinstance(array, jax.Array):
          array.delete()
    target, restored = checkpointer.restore_latest(trainer.abstract_state, data_iterator, _log,
                                                   before=anomalous_step)
    if target is None:
      return None
    checkpointer.delete_after(target)  # their steps will be trained again, on other batches
    scale = scalars["guard/learning_rate_scale"] * config.guard.rollback_learning_rate_factor
    shardings = trainer.state_shardings.guard
    restored = restored.replace(guard=restored.guard.replace(
        learning_rate_scale=jax.device_put(jnp.float32(scale), shardings.learning_rate_scale),
        rollbacks=jax.device_put(jnp.int32(rollbacks), shardings.rollbacks)))
    first_skipped = data_iterator.step
    data_iterator.restore({**data_iterator.state(), "step": batch_index + 1})
    event = {"event": "rollback", "step": anomalous_step, "batch": batch_index, "reason": _anomaly_reason(scalars),
             "restored_step": target, "skipped_batches": [first_skipped, batch_index],
             "learning_rate_scale": scale, "rollbacks": rollbacks}
    events.append(event)
    writer.event(anomalous_step, "rollback", **{k: v for k, v in event.items() if k not in ("event", "step")})
    _log(f"guard: step {anomalous_step} (batch {batch_index}): {event['reason']}; rolled back to step {target}, "
         f"skipping batches {first_skipped}..{batch_index}, learning rate x{scale:g}")
    return restored, target

  step = int(state.step)
  if config.eval.at_start and latest is None:  # the curves' starting point: the source's quality, or chance
    start = time.perf_counter()
    val_loss = run_evaluation(0)
    timers["eval"] += time.perf_counter() - start
  pending = None  # (step, batch index, device metrics) of the last step, read one step late
  preempted = None
  while step < total_steps:
    wait_start = time.perf_counter()
    batch_index = data_iterator.step
    host_batch = next(data_iterator)
    if batch_hook is not None:
      host_batch = batch_hook(batch_index, host_batch)
    # The batch's stage (its row length) picks the trainer; after a rollback's skipped batches the data
    # position runs ahead of the step, and the stage follows the data.
    index = stage_of(batch_index)
    if trainers[index] is not trainer:  # a new context stage (or a resume inside one)
      trainer, stage_config = trainers[index], stages[index][1]
      _log(f"context stage {index} at step {step} (batch {batch_index}): rows of {stage_config.data.seq_len} ids, "
           f"{stage_config.train.global_batch_size} per batch, RoPE scaling "
           f"{stage_config.model.rope_scaling} x{stage_config.model.rope_scaling_factor:g}")
      writer.event(step, "context_stage", stage=index, batch=batch_index, seq_len=stage_config.data.seq_len,
                   rows=stage_config.train.global_batch_size,
                   rope_scaling_factor=stage_config.model.rope_scaling_factor)
    batch = sharding.global_batch(host_batch, trainer.batch_sharding)
    timers["data"] += time.perf_counter() - wait_start
    state, metrics = trainer.train_step(state, batch)
    step += 1
    previous, pending = pending, (step, batch_index, metrics)
    preempted = (preemption.signal or "preemption notice") if preemption.requested() else None
    due_eval = step % config.eval.every_steps == 0 or step == total_steps
    due_save = step % config.checkpoint.every_steps == 0 or step == total_steps or preempted is not None
    rolled_back = None
    # The previous step's metrics are read now; before an evaluation or a save, this step's too, so that
    # no checkpoint holds a step whose guard verdict has not been acted on.
    for item in [previous] + ([pending] if due_eval or due_save else []):
      if item is None:
        continue
      if item is pending:
        pending = None
      scalars = read(*item)
      if scalars["guard/anomaly"] and config.guard.policy == "rollback":
        rolled_back = roll_back(item[0], item[1], scalars, live=[state, metrics, batch])
        if rolled_back is not None:
          break
        _log(f"guard: no checkpoint before step {item[0]} to roll back to; its update was skipped")
    if rolled_back is not None:  # the steps from the restored one on are trained again, on later batches
      state, step = rolled_back
      pending = None
      continue

    start = time.perf_counter()
    if due_eval and not preempted:
      val_loss = run_evaluation(step)
    if config.eval.tasks and not preempted and (step == total_steps or config.eval.tasks_every_steps
                                                and step % config.eval.tasks_every_steps == 0):
      run_tasks(step)
    if step % config.eval.sample_every_steps == 0 and step != total_steps and can_sample and not preempted:
      write_samples(step)
    if config.log.noise_scale_every_steps and step % config.log.noise_scale_every_steps == 0 and not preempted:
      sums = {k: float(v) for k, v in jax.device_get(trainer.noise_scale_sums(state.params, batch)).items()}
      writer.write(step, noise_scale.update(sums))
    timers["eval"] += time.perf_counter() - start
    start = time.perf_counter()
    checkpointer.save(step, state, data_iterator, force=due_save)
    timers["checkpoint"] += time.perf_counter() - start
    if preempted:
      break
  if pending is not None:
    read(*pending)
  if preempted:
    checkpointer.close()  # the save is on disk before the SIGTERM handler is released
    preemption.close()
    writer.event(step, "preempted", signal=preempted, checkpoint=checkpointer.step_dir(step), batch=data_iterator.step)
    writer.close()
    data_iterator.close()
    _log(f"preempted ({preempted}) at step {step}: saved {checkpointer.step_dir(step)}; "
         "relaunch the same command to continue")
    return {"step": step, "val_loss": val_loss, "unigram_entropy": data.unigram_entropy, "sample": "",
            "resumed_from": latest, "events": events, "preempted": preempted}
  if val_loss is None:  # the run was already complete: evaluate the restored state
    val_loss = run_evaluation(step)
  checkpointer.close()
  preemption.close()

  sample_text = ""
  if can_sample:
    sample_text = write_samples(step)
    _log(f"samples (step {step}):\n{sample_text}\n")
  writer.close()
  data_iterator.close()
  _log("realised mixture (share of rows, epochs):  " + ", ".join(
      f"{name} {e['share']:.3f} / {e['epochs']:.2f}" for name, e in data.stream.report(data_iterator.step).items()))
  _log(f"final: step={step} val_loss={val_loss:.4f} unigram_entropy={data.unigram_entropy:.4f}")
  if is_main:
    run_dir_lib.write_result(run_dir, {"step": step, "val_loss": val_loss, "unigram_entropy": data.unigram_entropy,
                                       "compute": compute, "events": events})
  return {"step": step, "val_loss": val_loss, "unigram_entropy": data.unigram_entropy, "sample": sample_text,
          "resumed_from": latest, "events": events, "preempted": None}
