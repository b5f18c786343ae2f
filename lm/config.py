"""Validation of a run's ConfigDict before anything is built or compiled.

Every field must exist in `configs/base.py` with a value of the same type, and the values
must fit together (divisibility of heads, batch and widths by the mesh, paths that exist).
Each error names the config key and what was expected.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import ml_collections

from configs import base
from lm import attention
from lm import evaluate
from lm import guard
from lm import layers
from lm import mlp
from lm import process
from lm import model
from lm import objectives
from lm import positions as positions_lib
from lm import sharding
from lm import tasks


class ConfigError(ValueError):
  """A config that cannot start a run; the message names the key."""


_DTYPES = ("float32", "bfloat16", "float16")


def _type_name(value: Any) -> str:
  return type(value).__name__


def _check_against_base(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str) -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in reference:
      known = ", ".join(sorted(f"{prefix}{k}" for k in reference.keys()))
      raise ConfigError(f"unknown config key '{name}' (known keys here: {known})")
    value, expected = config[key], reference[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{name}' must be a group of fields, got {_type_name(value)}")
      _check_against_base(value, expected, name + ".")
      continue
    ok = (isinstance(value, type(expected)) and not (isinstance(value, bool) and not isinstance(expected, bool))
          or isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool)
          or isinstance(expected, (tuple, list)) and isinstance(value, (tuple, list)))
    if not ok:
      raise ConfigError(f"config key '{name}' must be {_type_name(expected)}, got {_type_name(value)} {value!r}")
  for key in reference.keys():
    if key not in config:
      raise ConfigError(f"config key '{prefix}{key}' is missing (every field of configs/base.py is required)")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
  _require(value in allowed, f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _validate_model(m: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  """Consistency of the architecture fields of `config.model` (and data.seq_len against them)."""
  for key in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffn_dim",
              "max_seq_len", "attention_block_size", "blockwise_min_seq_len", "moe_every", "experts_per_token"):
    _require(m[key] > 0, f"model.{key} must be positive, got {m[key]}")
  for key in ("norm_eps", "init_std", "rope_theta"):
    _require(m[key] > 0, f"model.{key} must be positive, got {m[key]}")
  _require(m.attention_query_chunk >= 0, f"model.attention_query_chunk must be >= 0 (0 = off), got "
           f"{m.attention_query_chunk}")
  _one_of("model.mlp_activation", m.mlp_activation, mlp.ACTIVATIONS)
  _one_of("model.position_embedding", m.position_embedding, ("rope", "learned", "alibi", "none"))
  _one_of("model.norm_type", m.norm_type, ("rmsnorm", "layernorm"))
  _one_of("model.norm_position", m.norm_position, ("pre", "post"))
  _one_of("model.attention_impl", m.attention_impl, attention.IMPLEMENTATIONS)
  _one_of("model.objective", m.objective, objectives.OBJECTIVES)
  _one_of("model.init_scheme", m.init_scheme, ("normal", "scaled_output", "fan_in"))
  _one_of("model.remat_policy", m.remat_policy, ("none",) + tuple(model.REMAT_POLICIES))
  _one_of("model.param_dtype", m.param_dtype, _DTYPES)
  _one_of("model.compute_dtype", m.compute_dtype, _DTYPES + ("auto",))

  _require(m.d_model % m.num_heads == 0,
           f"model.d_model ({m.d_model}) must be divisible by model.num_heads ({m.num_heads})")
  _require(m.num_heads % m.num_kv_heads == 0,
           f"model.num_heads ({m.num_heads}) must be a multiple of model.num_kv_heads ({m.num_kv_heads})")
  if m.position_embedding == "rope":
    _require(m.head_dim % 2 == 0, f"model.head_dim must be even for RoPE, got {m.head_dim}")
  _one_of("model.rope_scaling", m.rope_scaling, positions_lib.ROPE_SCALINGS)
  _require(m.rope_scaling_factor >= 1.0, f"model.rope_scaling_factor must be >= 1 (the context grows s times; 1 = "
           f"plain RoPE), got {m.rope_scaling_factor}")
  _require(m.rope_scaling == "none" or m.position_embedding == "rope",
           f"model.rope_scaling is {m.rope_scaling!r} but model.position_embedding is {m.position_embedding!r}; "
           "scaling applies to RoPE only")
  _require(m.rope_original_max_seq_len > 0, f"model.rope_original_max_seq_len must be positive, got "
           f"{m.rope_original_max_seq_len}")
  _require(m.rope_yarn_beta_fast > m.rope_yarn_beta_slow > 0, "model.rope_yarn_beta_fast must exceed "
           f"model.rope_yarn_beta_slow > 0, got {m.rope_yarn_beta_fast} and {m.rope_yarn_beta_slow}")
  _require(m.rope_llama3_high_frequency_factor > m.rope_llama3_low_frequency_factor > 0,
           "model.rope_llama3_high_frequency_factor must exceed model.rope_llama3_low_frequency_factor > 0, got "
           f"{m.rope_llama3_high_frequency_factor} and {m.rope_llama3_low_frequency_factor}")
  _require(d.seq_len <= m.max_seq_len, f"data.seq_len ({d.seq_len}) exceeds model.max_seq_len ({m.max_seq_len}), "
           "the model's context length")

  pattern = tuple(m.attention_pattern)
  _require(len(pattern) > 0 and all(kind in ("global", "local") for kind in pattern),
           f"model.attention_pattern must be a non-empty sequence of 'global' / 'local', got {pattern!r}")
  _require(m.num_layers % len(pattern) == 0,
           f"model.attention_pattern has {len(pattern)} entries {pattern!r}, which does not divide "
           f"model.num_layers ({m.num_layers}); the pattern repeats over depth")
  if "local" in pattern:
    _require(m.sliding_window > 0, f"model.attention_pattern {pattern!r} has local layers but model.sliding_window "
             f"is {m.sliding_window}; it must be positive")
  _require(m.sliding_window >= 0, f"model.sliding_window must be >= 0, got {m.sliding_window}")
  _require(m.sliding_window == 0 or "local" in pattern, f"model.sliding_window is {m.sliding_window} but "
           f"model.attention_pattern {pattern!r} has no 'local' layer to apply it to")
  _require(m.attention_logit_softcap >= 0,
           f"model.attention_logit_softcap must be >= 0, got {m.attention_logit_softcap}")
  _require(not (m.attention_impl == "dot_product_attention" and m.attention_logit_softcap > 0),
           "model.attention_impl 'dot_product_attention' has no logit soft-cap; set model.attention_logit_softcap "
           "to 0 or use xla / blockwise")

  _require(m.num_experts >= 0, f"model.num_experts must be >= 0, got {m.num_experts}")
  if m.num_experts > 0:
    _require(m.experts_per_token <= m.num_experts, f"model.experts_per_token ({m.experts_per_token}) exceeds "
             f"model.num_experts ({m.num_experts})")
    _require(m.num_layers % m.moe_every == 0,
             f"model.moe_every ({m.moe_every}) does not divide model.num_layers ({m.num_layers})")
    _require(m.capacity_factor > 0, f"model.capacity_factor must be positive, got {m.capacity_factor}")
    _require(m.moe_group_size > 0 and (d.seq_len <= m.moe_group_size or d.seq_len % m.moe_group_size == 0),
             f"data.seq_len ({d.seq_len}) must be at most, or a multiple of, model.moe_group_size "
             f"({m.moe_group_size}), the MoE routing group")
  for key in ("load_balance_loss_weight", "router_z_loss_weight", "logits_z_loss_weight"):
    _require(m[key] >= 0, f"model.{key} must be >= 0, got {m[key]}")

  _require(0.0 < m.masked_lm_fraction <= 1.0, f"model.masked_lm_fraction must be in (0, 1], got {m.masked_lm_fraction}")
  shares = tuple(m.masked_lm_mask_random_keep)
  _require(len(shares) == 3 and all(isinstance(x, (int, float)) and x >= 0 for x in shares)
           and abs(sum(shares) - 1.0) < 1e-6,
           f"model.masked_lm_mask_random_keep must be three shares >= 0 summing to 1, got {shares!r}")


def for_platform(config: ml_collections.ConfigDict, backend: str) -> ml_collections.ConfigDict:
  """A copy of `config` with the platform-dependent choices made for `backend` ('cpu' | 'gpu' | 'tpu'):
  model.compute_dtype 'auto' becomes float32 on CPU, bfloat16 on accelerators."""
  config = copy.deepcopy(config)
  config.model.compute_dtype = layers.compute_dtype_name(config.model.compute_dtype, backend)
  return config


def _validate_tasks(ev: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> None:
  for key in ("tasks_every_steps", "tasks_shots", "tasks_max_items"):
    _require(ev[key] >= 0, f"eval.{key} must be >= 0, got {ev[key]}")
  _one_of("eval.tasks_too_long", ev.tasks_too_long, evaluate.TOO_LONG)
  for entry in ev.tasks:
    _require(isinstance(entry, (tuple, list)) and len(entry) == 2,
             f"eval.tasks must hold (task, JSONL path) pairs, got {entry!r}")
    _one_of("eval.tasks task", entry[0], tasks.TASKS)
    _require(os.path.isfile(entry[1]), f"eval.tasks: the {entry[0]} file {entry[1]!r} does not exist")
  _require(not ev.tasks or m.objective == "causal",
           f"eval.tasks score continuations, which needs model.objective 'causal', got {m.objective!r}")


def context_stages(config: ml_collections.ConfigDict) -> list[tuple[int, ml_collections.ConfigDict]]:
  """(first step, config) of each context stage: stage 0 is the config itself from step 0, then one per entry of
  data.context_stages with data.seq_len, model.rope_scaling_factor and train.global_batch_size (rows, so that the
  tokens per step stay those of stage 0) set. The entries are assumed valid (`validate`)."""
  stages = [(0, config)]
  tokens_per_step = config.train.global_batch_size * config.data.seq_len
  for step, seq_len, factor in config.data.context_stages:
    stage = copy.deepcopy(config)
    stage.data.seq_len, stage.model.rope_scaling_factor = seq_len, float(factor)
    stage.train.global_batch_size = tokens_per_step // seq_len
    stages.append((step, stage))
  return stages


def _validate_context_stages(config: ml_collections.ConfigDict, data_parallel: int, process_count: int) -> None:
  m, d, t = config.model, config.data, config.train
  last_step, last_len = 0, d.seq_len
  tokens_per_step = t.global_batch_size * d.seq_len
  for i, entry in enumerate(d.context_stages):
    key = f"data.context_stages[{i}]"
    _require(isinstance(entry, (tuple, list)) and len(entry) == 3 and isinstance(entry[0], int)
             and isinstance(entry[1], int) and isinstance(entry[2], (int, float)),
             f"{key}: expected (step, seq_len, rope_scaling_factor), got {entry!r}")
    step, seq_len, factor = entry
    _require(step > last_step, f"{key}: stage steps must increase from 1 on, got {step} after {last_step}")
    _require(step < t.steps, f"{key}: step {step} is not before train.steps ({t.steps})")
    _require(seq_len > last_len, f"{key}: seq_len must increase stage by stage, got {seq_len} after {last_len}")
    _require(seq_len <= m.max_seq_len, f"{key}: seq_len {seq_len} exceeds model.max_seq_len ({m.max_seq_len})")
    _require(factor >= 1.0, f"{key}: the RoPE scaling factor must be >= 1, got {factor}")
    _require(factor == 1.0 or m.rope_scaling != "none", f"{key}: a RoPE scaling factor of {factor} needs a method: "
             "set model.rope_scaling (linear | ntk | yarn | llama3)")
    rows = tokens_per_step // seq_len
    _require(tokens_per_step % seq_len == 0 and rows % (data_parallel * t.microbatches * process_count) == 0,
             f"{key}: the {tokens_per_step} tokens per step (train.global_batch_size x data.seq_len) must make "
             f"whole rows of {seq_len}, a multiple of the data-parallel size x train.microbatches x processes "
             f"({data_parallel} x {t.microbatches} x {process_count}); got {tokens_per_step / seq_len:g} rows")
    last_step, last_len = step, seq_len
  _require(not (d.context_stages and d.mixture_epochs), "data.context_stages and data.mixture_epochs do not combine: "
           "epochs are counted in rows of one length")


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError naming the offending key if `config` cannot start a run on `num_devices` devices."""
  _check_against_base(config, base.get_config(), "")
  m, d, mesh, t = config.model, config.data, config.mesh, config.train

  _validate_model(m, d)
  _require(not (d.path and d.tokens_dir), "set data.path (documents tokenized at launch) or data.tokens_dir "
           f"(token shards), not both: got {d.path!r} and {d.tokens_dir!r}")
  if d.path:
    _require(os.path.exists(d.path), f"data.path does not exist: {d.path!r}")
  if d.tokens_dir:
    _require(os.path.isdir(d.tokens_dir), f"data.tokens_dir does not exist: {d.tokens_dir!r}")
  _require(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
  _require(d.prefetch_batches >= 1, f"data.prefetch_batches must be >= 1, got {d.prefetch_batches}")
  _require(d.mixture_temperature > 0, f"data.mixture_temperature must be > 0, got {d.mixture_temperature}")
  _require(d.seq_len > 0, f"data.seq_len must be positive, got {d.seq_len}")
  _require(0.0 < d.validation_fraction < 1.0, f"data.validation_fraction must be in (0, 1), got {d.validation_fraction}")

  for key in sharding.MESH_AXES + sharding.DCN_FIELDS:
    _require(mesh[key] > 0 or key == "data" and mesh[key] == -1,
             f"mesh.{key} must be positive{' or -1' if key == 'data' else ''}, got {mesh[key]}")
  try:
    sizes = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(mesh, num_devices)))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  data_parallel = sizes["data"] * sizes["fsdp"] * sizes["expert"]
  _require(t.global_batch_size > 0, f"train.global_batch_size must be positive, got {t.global_batch_size}")
  _require(t.global_batch_size % data_parallel == 0,
           f"train.global_batch_size ({t.global_batch_size}) is not divisible by the data-parallel size "
           f"data x fsdp x expert = {sizes['data']} x {sizes['fsdp']} x {sizes['expert']} = {data_parallel}")
  _require(t.microbatches > 0, f"train.microbatches must be positive, got {t.microbatches}")
  _one_of("train.host_allocator", t.host_allocator, process.ALLOCATORS)
  _one_of("train.cpu_dot_library", t.cpu_dot_library, process.CPU_DOT_LIBRARIES)
  _require(t.global_batch_size % (data_parallel * t.microbatches) == 0,
           f"train.global_batch_size ({t.global_batch_size}) is not divisible by train.microbatches "
           f"({t.microbatches}) x the data-parallel size ({data_parallel}): each microbatch must split evenly "
           "over the devices")
  _require(t.global_batch_size % process_count == 0,
           f"train.global_batch_size ({t.global_batch_size}) must be a multiple of the {process_count} processes: "
           "each process reads an equal share of every batch")
  _validate_context_stages(config, data_parallel, process_count)
  # Every parameter dimension must split evenly over the mesh axes its logical name maps to.
  try:
    sharding.check_divisible(model.abstract_params(m), sharding.rules(mesh), sizes)
  except sharding.ShardingError as e:
    raise ConfigError(str(e)) from None

  _require(t.steps > 0, f"train.steps must be positive, got {t.steps}")
  _require(t.init_learning_rate_fraction >= 0, "train.init_learning_rate_fraction must be >= 0 (0 = "
           f"optim.peak_learning_rate as set), got {t.init_learning_rate_fraction}")
  _require(t.run_dir != "", "train.run_dir must name a directory")
  for key in ("checkpoint.every_steps", "checkpoint.max_to_keep", "eval.every_steps", "eval.sample_every_steps",
              "log.every_steps", "guard.window"):
    group, field = key.split(".")
    _require(config[group][field] > 0, f"{key} must be positive, got {config[group][field]}")
  for key in ("checkpoint.keep_every_steps", "log.noise_scale_every_steps", "guard.loss_spike_stds",
              "guard.grad_norm_spike_factor", "guard.max_rollbacks"):
    group, field = key.split(".")
    _require(config[group][field] >= 0, f"{key} must be >= 0, got {config[group][field]}")
  _one_of("guard.policy", config.guard.policy, guard.POLICIES)
  _require(0.0 < config.guard.rollback_learning_rate_factor <= 1.0,
           f"guard.rollback_learning_rate_factor must be in (0, 1], got {config.guard.rollback_learning_rate_factor}")
  _require(config.log.noise_scale_every_steps == 0 or t.global_batch_size >= 2,
           "log.noise_scale_every_steps needs train.global_batch_size >= 2 (it compares the gradients of two halves)")
  prompts = config.eval.sample_prompts
  _require(isinstance(prompts, (tuple, list)) and all(isinstance(p, str) and p for p in prompts),
           f"eval.sample_prompts must be a tuple of non-empty strings, got {prompts!r}")
  _require(config.eval.max_batches >= 0, f"eval.max_batches must be >= 0, got {config.eval.max_batches}")
  _validate_tasks(config.eval, m)
  _one_of("optim.state_dtype", config.optim.state_dtype, ("float32", "bfloat16"))
  _require(config.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {config.optim.warmup_steps}")
