"""Training: the train state, the pure jitted step functions, and the loop around them.

`Trainer` holds the pure functions of one run (`init_state`, `train_step`, `eval_step`,
`next_token`), each jitted with explicit shardings derived from the logical-axis rules.
`run(config)` is the imperative shell: data, checkpoints, metrics, evaluation, sampling.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
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
from lm import metrics as metrics_lib
from lm import model as model_lib
from lm import objectives
from lm import optim
from lm import params as params_lib
from lm import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # float32 (model.param_dtype) parameter tree
  opt_state: Any  # optax state (AdamW moments in float32)
  rng: jax.Array  # uint32[2] base key; step k uses fold_in(rng, k)


def batch_losses(params, model: nn.Module, batch: dict[str, jax.Array],
                 with_logits_z: bool = False) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(`objectives.summed_losses` of the model on `batch`, the model's MoE statistics ({} if dense)).

  `batch` is already prepared for the objective (see `objectives.prepare_batch`).
  """
  logits, moe = model.apply({"params": params}, batch["inputs"], batch["segment_ids"], batch["positions"])
  return objectives.summed_losses(logits, batch["targets"], batch["loss_mask"], with_logits_z), moe


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
  abstract_state: TrainState  # ShapeDtypeStructs with shardings, never allocated: the target of a restore


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Trainer:
  """Builds the model, optimizer and jitted step functions of `config` on `mesh`."""
  config = config_lib.for_platform(config, mesh.devices.flat[0].platform)
  model = model_lib.from_config(config.model)
  rules = sharding.rules(config.mesh)
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  schedule = optim.learning_rate_schedule(config.optim, config.train.steps)
  seq_len = config.data.seq_len

  def init_boxed(rng):
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init(rng, dummy, dummy, dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng)

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
    params = optax.apply_updates(state.params, updates)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    metrics = {"train/loss": sums["cross_entropy"] / tokens, "train/total_loss": loss,
               "train/grad_norm": optax.global_norm(grads), "train/learning_rate": schedule(state.step),
               "train/target_tokens": sums["tokens"], **moe_metrics(moe)}
    if "logits_z" in sums:
      metrics["train/logits_z_loss"] = sums["logits_z"] / tokens
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def eval_step(params, batch):
    # The masked objective corrupts each validation batch the same way at every evaluation, and
    # different batches differently: the key is derived from the batch's own tokens.
    rng = jax.random.fold_in(jax.random.PRNGKey(config.eval.masked_lm_seed), jnp.sum(batch["inputs"]))
    sums, _ = batch_losses(params, model, objectives.prepare_batch(batch, config.model, rng))
    return sums["cross_entropy"], sums["tokens"]

  def forward(params, inputs, segment_ids, positions):
    return model.apply({"params": params}, inputs, segment_ids, positions)[0]

  def in_context(fn):
    """`fn` called inside the mesh and logical-rule context that tracing the model needs."""
    @functools.wraps(fn)
    def wrapped(*args):
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return fn(*args)
    return wrapped

  next_token = generate_lib.make_next_token_fn(forward, config.eval.sample_temperature, config.eval.sample_top_k)
  return Trainer(
      model=model, mesh=mesh, rules=rules, state_shardings=state_shardings, batch_sharding=batch_sharding,
      learning_rate=schedule,
      init_state=in_context(jax.jit(lambda rng: nn.meta.unbox(init_boxed(rng)), out_shardings=state_shardings)),
      train_step=in_context(jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                                    out_shardings=(state_shardings, replicated), donate_argnums=0)),
      eval_step=in_context(jax.jit(eval_step,
                                   in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated)),
      next_token=in_context(jax.jit(next_token, in_shardings=(state_shardings.params, batch_sharding, None, None),
                                    out_shardings=replicated)),
      abstract_state=abstract_state,
  )


def _prepare_run_dir(config: ml_collections.ConfigDict, is_main: bool) -> None:
  """Creates the run dir and records config.json; refuses a relaunch whose model or data differ."""
  run_dir = config.train.run_dir
  path = os.path.join(run_dir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    current = json.loads(config.to_json())
    changed = [f"{group}.{key}" for group in ("model", "data")
               for key in current[group] if saved.get(group, {}).get(key) != current[group][key]]
    if changed:
      raise config_lib.ConfigError(
          f"{run_dir} holds a run whose config differs in {', '.join(changed)}; "
          "use a new train.run_dir or the same values")
  if is_main:
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config.to_json(indent=2))


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class RunData:
  tokenizer: tokenizer_lib.Tokenizer
  tokens_dir: str  # the token shards read (data.tokens_dir, or RUN_DIR/tokens written at launch)
  stream: loader.Stream  # the training batches as a function of the step
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
    tokenizer_lib.train_or_load(train_docs, config.model.vocab_size, tokenizer_dir, config.data.tokenizer_max_sentences)
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
    stream = loader.make_stream(
        train_splits, seq_len=seq_len, global_batch_size=batch_size, seed=d.shuffle_seed, pad_id=tokenizer.pad_id,
        total_steps=config.train.steps, mixture=d.mixture, temperature=d.mixture_temperature,
        epochs=d.mixture_epochs, curriculum=d.curriculum)
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


def _sample(config, trainer: Trainer, params, tokenizer: tokenizer_lib.Tokenizer, step: int) -> str:
  """The fixed prompt and one sampled continuation of it."""
  prompt = config.eval.sample_prompt
  continuations = generate_lib.sample(
      trainer.next_token, params, [tokenizer.bos_id] + tokenizer.encode(prompt), window=config.data.seq_len,
      batch_size=sharding.data_parallel_size(trainer.mesh), max_new_tokens=config.eval.sample_tokens,
      eos_id=tokenizer.eos_id, rng=jax.random.fold_in(jax.random.PRNGKey(config.train.seed), step),
      put=lambda array: sharding.from_full_host_array(array, trainer.batch_sharding))
  return prompt + tokenizer.decode(continuations[0])


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or resumes) the run of `config`; returns the final step, validation loss and sample."""
  config = config_lib.for_platform(config, jax.default_backend())
  config_lib.validate(config, jax.device_count(), jax.process_count())
  is_main = jax.process_index() == 0
  run_dir = os.path.abspath(config.train.run_dir)
  _prepare_run_dir(config, is_main)
  mesh = sharding.make_mesh(config.mesh)
  _log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
       f"{jax.process_count()} process(es); run dir {run_dir}")
  data = prepare_data(config, run_dir)
  tokenizer, validation_rows = data.tokenizer, data.validation_rows
  if config.model.objective == "masked" and tokenizer.mask_id != tokenizer_lib.MASK_ID:
    raise config_lib.ConfigError(
        f"model.objective 'masked' needs a tokenizer with a <mask> piece (id {tokenizer_lib.MASK_ID}); "
        f"the one in {run_dir}/tokenizer has none: use a new run dir")
  seq_len, global_batch_size = config.data.seq_len, config.train.global_batch_size

  data_iterator = loader.TrainIterator(
      data.stream, step=0, process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=config.data.num_workers, prefetch=config.data.prefetch_batches)

  trainer = build(config, mesh)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), config.checkpoint.every_steps,
                                             config.checkpoint.max_to_keep)
  latest = checkpointer.latest_step()
  if latest is not None:
    try:
      state = checkpointer.restore(latest, trainer.abstract_state, data_iterator)
    except ValueError as e:
      raise config_lib.ConfigError(f"{os.path.join(run_dir, 'checkpoints', str(latest))}: {e}") from None
    if data_iterator.step != int(state.step):
      raise RuntimeError(f"checkpoint {latest}: the loader position ({data_iterator.step}) is not the train step "
                         f"({int(state.step)})")
    _log(f"resumed from step {latest} ({os.path.join(run_dir, 'checkpoints', str(latest))})")
  else:
    state = trainer.init_state(jax.random.PRNGKey(config.train.seed))
  param_count = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  _log(f"model: {param_count:,} parameters")
  layout = params_lib.sharding_report(config, dict(mesh.shape))
  if is_main:
    with open(os.path.join(run_dir, "shardings.txt"), "w") as f:
      f.write(layout + "\n")
  _log("\n".join(layout.splitlines()[-3:]) + f"  (every parameter: {os.path.join(run_dir, 'shardings.txt')})")

  writer = metrics_lib.MetricsWriter(run_dir, enabled=is_main)
  flops_per_token = metrics_lib.flops_per_token(config.model, seq_len)
  peak, peak_source = metrics_lib.peak_flops_per_device(config.log)
  _log(f"MFU uses {flops_per_token / 1e6:.1f} MFLOP/token (6N + attention) against {peak / 1e9:,.0f} GFLOP/s "
       f"per device ({peak_source})")

  def run_evaluation(step: int) -> float:
    """Validation loss of each source and of all of them (token-weighted); returns the latter."""
    scalars, per_source, summed, tokens = {}, [], 0.0, 0.0
    for name, rows in validation_rows.items():
      batches = (
          {k: sharding.from_full_host_array(v, trainer.batch_sharding) for k, v in batch.items()}
          for batch in loader.evaluation_batches(rows, global_batch_size))
      result = evaluate_lib.evaluate(trainer.eval_step, state.params, batches)
      scalars[f"eval/{name}/loss"] = result["loss"]
      per_source.append(f"{name} {result['loss']:.4f}")
      summed, tokens = summed + result["loss"] * result["tokens"], tokens + result["tokens"]
    loss = summed / tokens
    scalars.update({"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0))})
    writer.write(step, scalars)
    _log(f"eval  step {step}: val_loss {loss:.4f}  perplexity {scalars['eval/perplexity']:.2f}  "
         f"({tokens:,.0f} tokens; {', '.join(per_source)})")
    return loss

  total_steps = config.train.steps
  step = int(state.step)
  tokens_per_step = global_batch_size * seq_len
  window: list[dict[str, float]] = []
  pending = None  # metrics of the previous step, read one step late so the host never waits on the device
  window_start = time.perf_counter()
  data_wait = 0.0
  val_loss = None

  def flush(metrics_step: int, metrics: dict) -> None:
    nonlocal window_start, data_wait, window
    window.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    if metrics_step % config.log.every_steps and metrics_step != total_steps:
      return
    elapsed = time.perf_counter() - window_start
    tokens_per_second = len(window) * tokens_per_step / elapsed
    scalars = metrics_lib.mean_of(window)
    scalars.update({
        "perf/tokens_per_second": tokens_per_second,
        "perf/mfu": flops_per_token * tokens_per_second / (peak * jax.device_count()),
        "perf/step_seconds": elapsed / len(window),
        "perf/data_wait_fraction": data_wait / elapsed,
    })
    # The realised mixture: closed-form counts of the rows each source gave to batches 0 .. step - 1.
    for name, entry in data.stream.report(metrics_step).items():
      scalars[f"data/{name}/share"], scalars[f"data/{name}/epochs"] = entry["share"], entry["epochs"]
    writer.write(metrics_step, scalars)
    _log(metrics_lib.progress_line(metrics_step, total_steps, scalars, elapsed / len(window)))
    window, data_wait, window_start = [], 0.0, time.perf_counter()

  while step < total_steps:
    wait_start = time.perf_counter()
    batch = sharding.global_batch(next(data_iterator), trainer.batch_sharding)
    data_wait += time.perf_counter() - wait_start
    state, metrics = trainer.train_step(state, batch)
    step += 1
    if pending is not None:
      flush(*pending)
    pending = (step, metrics)
    if step % config.eval.every_steps == 0 or step == total_steps:
      flush(*pending)
      pending = None
      val_loss = run_evaluation(step)
      window_start = time.perf_counter()
    checkpointer.save(step, state, data_iterator, force=step == total_steps)
  if pending is not None:
    flush(*pending)
  if val_loss is None:  # the run was already complete: evaluate the restored state
    val_loss = run_evaluation(step)
  checkpointer.wait()
  checkpointer.close()

  sample_text = ""
  if config.model.objective == "causal":  # a masked-LM model does not continue text
    sample_text = _sample(config, trainer, state.params, tokenizer, step)
    if is_main:
      with open(os.path.join(run_dir, "samples.txt"), "a") as f:
        f.write(f"=== step {step}\n{sample_text}\n")
      writer.write_text(step, "samples", sample_text)
    _log(f"sample (step {step}):\n{sample_text}\n")
  writer.close()
  data_iterator.close()
  _log("realised mixture (share of rows, epochs):  " + ", ".join(
      f"{name} {e['share']:.3f} / {e['epochs']:.2f}" for name, e in data.stream.report(step).items()))
  _log(f"final: step={step} val_loss={val_loss:.4f} unigram_entropy={data.unigram_entropy:.4f}")
  return {"step": step, "val_loss": val_loss, "unigram_entropy": data.unigram_entropy, "sample": sample_text,
          "resumed_from": latest}

