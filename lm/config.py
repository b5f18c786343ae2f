"""Validation of a run's ConfigDict before anything is built or compiled.

Every field must exist in `configs/base.py` with a value of the same type, and the values
must fit together (divisibility of heads, batch and widths by the mesh, paths that exist).
Each error names the config key and what was expected.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from configs import base
from lm import sharding


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


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError naming the offending key if `config` cannot start a run on `num_devices` devices."""
  _check_against_base(config, base.get_config(), "")
  m, d, mesh, t = config.model, config.data, config.mesh, config.train

  for key in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffn_dim"):
    _require(m[key] > 0, f"model.{key} must be positive, got {m[key]}")
  _require(m.num_heads % m.num_kv_heads == 0,
           f"model.num_heads ({m.num_heads}) must be a multiple of model.num_kv_heads ({m.num_kv_heads})")
  _require(m.head_dim % 2 == 0, f"model.head_dim must be even for RoPE, got {m.head_dim}")
  for key in ("param_dtype", "compute_dtype"):
    _require(m[key] in _DTYPES, f"model.{key} must be one of {_DTYPES}, got {m[key]!r}")

  if d.path:
    _require(os.path.exists(d.path), f"data.path does not exist: {d.path!r}")
  _require(d.seq_len > 0, f"data.seq_len must be positive, got {d.seq_len}")
  _require(0.0 < d.validation_fraction < 1.0, f"data.validation_fraction must be in (0, 1), got {d.validation_fraction}")
  _require(d.num_packing_bins > 0, f"data.num_packing_bins must be positive, got {d.num_packing_bins}")

  for key in ("data", "fsdp", "tensor"):
    _require(mesh[key] > 0 or key == "data" and mesh[key] == -1,
             f"mesh.{key} must be positive{' or -1' if key == 'data' else ''}, got {mesh[key]}")
  try:
    data_size, _, _ = sharding.mesh_shape(mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  data_parallel = data_size * mesh.fsdp
  _require(t.global_batch_size > 0, f"train.global_batch_size must be positive, got {t.global_batch_size}")
  _require(t.global_batch_size % data_parallel == 0,
           f"train.global_batch_size ({t.global_batch_size}) is not divisible by the data-parallel size "
           f"mesh.data x mesh.fsdp = {data_size} x {mesh.fsdp} = {data_parallel}")
  _require(t.global_batch_size % process_count == 0,
           f"train.global_batch_size ({t.global_batch_size}) is not divisible by the {process_count} processes")
  for key in ("num_heads", "num_kv_heads", "ffn_dim", "vocab_size"):
    _require(m[key] % mesh.tensor == 0, f"model.{key} ({m[key]}) is not divisible by mesh.tensor ({mesh.tensor})")
  _require(m.d_model % mesh.fsdp == 0, f"model.d_model ({m.d_model}) is not divisible by mesh.fsdp ({mesh.fsdp})")

  _require(t.steps > 0, f"train.steps must be positive, got {t.steps}")
  _require(t.run_dir != "", "train.run_dir must name a directory")
  for key in ("checkpoint.every_steps", "checkpoint.max_to_keep", "eval.every_steps", "log.every_steps"):
    group, field = key.split(".")
    _require(config[group][field] > 0, f"{key} must be positive, got {config[group][field]}")
  _require(config.eval.max_batches >= 0, f"eval.max_batches must be >= 0, got {config.eval.max_batches}")
  _require(config.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {config.optim.warmup_steps}")
