"""A new run's parameters from an existing model: continued pre-training and context extension.

`train.init_from` names the source model:
  - a run directory of this project (its newest sound checkpoint),
  - one of its checkpoints, RUN_DIR/checkpoints/STEP,
  - a Hugging Face LlamaForCausalLM directory (config.json, safetensors, tokenizer.model).

Only the parameters are taken. The step, the optimizer moments, the guard's history and the
data position start fresh, and the learning-rate schedule is the new run's own: its warmup,
then decay from train.init_learning_rate_fraction x the source's peak (continued pre-training
usually restarts at 10-30% of the original peak, which limits forgetting).

The new config may change whatever keeps the parameter shapes (RoPE scaling, context length,
data, optimizer, ...). Shape changes are refused with every mismatched parameter named,
except that train.init_resize copies what fits where the vocabulary, the layer count or a
learned position table differ, and leaves the rest as freshly initialised.

The source's tokenizer is the run's: tokenizing at launch uses it, and token shards written
with another tokenizer are refused (they would feed the model ids it never learned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from data import tokenizer as tokenizer_lib
from lm import checkpoint as checkpoint_lib
from lm import config as config_lib
from lm import run_dir as run_dir_lib

# Logical axes along which train.init_resize may copy a prefix (rows of the vocabulary, layers of the scan).
RESIZABLE_AXES = ("vocab", "layers")
POSITION_TABLE = "params/position_embed/embedding"  # its rows are positions (axis 0)


@dataclasses.dataclass(frozen=True)
class Source:
  """The model a run starts from (`find_source`)."""

  kind: str  # "run" (a run of this project) | "huggingface"
  path: str  # as train.init_from gave it, absolute
  directory: str  # the run directory, or the Hugging Face directory
  step: int | None  # the checkpoint step of a run (None = its newest sound one); None for Hugging Face
  config: ml_collections.ConfigDict  # the source's config (Hugging Face: its architecture in our fields)
  peak_learning_rate: float | None  # the source run's optim.peak_learning_rate; None for Hugging Face
  tokenizer_hash: str  # sha256 of its SentencePiece model bytes

  def describe(self) -> str:
    if self.kind == "huggingface":
      return f"Hugging Face model {self.directory}"
    return f"run {self.directory} " + ("(newest checkpoint)" if self.step is None else f"step {self.step}")


def _error(message: str) -> config_lib.ConfigError:
  return config_lib.ConfigError(f"train.init_from: {message}")


def find_source(path: str, config: ml_collections.ConfigDict) -> Source:
  """The source model `path` names (see the module docstring); `config` is the new run's (the base of a
  Hugging Face model's config, as in `lm.interchange`).

  Raises:
    ConfigError: the path is none of the three kinds, or its config / tokenizer cannot be read.
  """
  from lm import interchange  # pylint: disable=import-outside-toplevel  # interchange imports train, which imports this

  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise _error(f"{path} is not a directory (expected a run directory, RUN_DIR/checkpoints/STEP or a "
                 "Hugging Face Llama directory)")
  step = None
  directory = path
  parent = os.path.dirname(path)
  if os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit():
    directory, step = os.path.dirname(parent), int(os.path.basename(path))
  config_path = os.path.join(directory, run_dir_lib.CONFIG)
  if not os.path.exists(config_path):
    raise _error(f"{directory} has no {run_dir_lib.CONFIG}: it is neither a run directory nor a Hugging Face model")
  try:
    with open(config_path) as f:
      raw = json.load(f)
  except ValueError as e:
    raise _error(f"{config_path} is not valid JSON ({e})") from None
  if "model_type" in raw:  # a Hugging Face config; ours has the groups model, data, ...
    if step is not None:
      raise _error(f"{path}: a Hugging Face directory has no checkpoints/STEP")
    try:
      source_config = interchange.config_from_hf(raw, config)
    except interchange.InterchangeError as e:
      raise _error(f"{directory}: {e}") from None
    tokenizer_file = os.path.join(directory, interchange.HF_TOKENIZER)
    if not os.path.exists(tokenizer_file):
      raise _error(f"{directory} has no {interchange.HF_TOKENIZER}: only SentencePiece tokenizers can be used")
    with open(tokenizer_file, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    return Source("huggingface", path, directory, None, source_config, None, digest)
  source_config = run_dir_lib.load_config(directory)
  tokenizer_dir = os.path.join(directory, "tokenizer")
  if not tokenizer_lib.exists(tokenizer_dir):
    raise _error(f"{tokenizer_dir} holds no tokenizer: {directory} has not been launched")
  if not os.path.isdir(os.path.join(directory, "checkpoints")):
    raise _error(f"{directory} has no checkpoints/ to start from")
  return Source("run", path, directory, step, source_config, float(source_config.optim.peak_learning_rate),
                tokenizer_lib.model_hash(tokenizer_dir))


def resolve_learning_rate(config: ml_collections.ConfigDict, source: Source) -> ml_collections.ConfigDict:
  """`config` with optim.peak_learning_rate = train.init_learning_rate_fraction x the source's peak
  (a Hugging Face source: x this config's optim.peak_learning_rate); unchanged when the fraction is 0."""
  fraction = config.train.init_learning_rate_fraction
  if not fraction:
    return config
  original = config.optim.peak_learning_rate if source.peak_learning_rate is None else source.peak_learning_rate
  config = config.copy_and_resolve_references()
  config.optim.peak_learning_rate = fraction * original
  return config


def has_checkpoints(run_dir: str) -> bool:
  """Whether `run_dir` holds a checkpoint step directory already (a relaunch, which resumes instead)."""
  directory = os.path.join(run_dir, "checkpoints")
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def keep_learning_rate(config: ml_collections.ConfigDict, run_dir: str) -> ml_collections.ConfigDict:
  """`config` with the peak learning rate its run resolved at its first launch (RUN_DIR/config.json), when
  train.init_learning_rate_fraction derives it."""
  if not config.train.init_learning_rate_fraction or not os.path.exists(os.path.join(run_dir, run_dir_lib.CONFIG)):
    return config
  config = config.copy_and_resolve_references()
  config.optim.peak_learning_rate = run_dir_lib.load_config(run_dir).optim.peak_learning_rate
  return config


def place_tokenizer(config: ml_collections.ConfigDict, source: Source, run_dir: str) -> None:
  """Tokenizing at launch (no data.tokens_dir): puts the source's tokenizer in RUN_DIR/tokenizer first, so the
  launch tokenizes with it instead of training one. Skipped when the run has a tokenizer already, or when
  the vocabulary is being resized (then the run trains its own)."""
  from lm import interchange  # pylint: disable=import-outside-toplevel

  tokenizer_dir = os.path.join(run_dir, "tokenizer")
  if config.data.tokens_dir or tokenizer_lib.exists(tokenizer_dir):
    return
  if source.config.model.vocab_size != config.model.vocab_size:
    return
  if source.kind == "run":
    shutil.copytree(os.path.join(source.directory, "tokenizer"), tokenizer_dir, dirs_exist_ok=True)
  else:
    interchange.write_tokenizer(source.directory, config.model.vocab_size, tokenizer_dir)


def check_tokenizer(config: ml_collections.ConfigDict, source: Source, run_dir: str, tokens_dir: str) -> None:
  """Raises ConfigError when the run's tokenizer (that of its token shards) is not the source's, unless the
  vocabulary is being resized (train.init_resize with another model.vocab_size)."""
  if config.train.init_resize and source.config.model.vocab_size != config.model.vocab_size:
    return
  if tokenizer_lib.model_hash(os.path.join(run_dir, "tokenizer")) != source.tokenizer_hash:
    raise _error(f"the tokens in {tokens_dir} were written with another tokenizer than {source.describe()}'s; "
                 "continued training must read ids of the source's tokenizer: write the shards with it "
                 f"(its tokenizer directory) or tokenize at launch (data.tokens_dir = '')")


def _model_differences(source: ml_collections.ConfigDict, target: ml_collections.ConfigDict) -> str:
  keys = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffn_dim", "max_seq_len",
          "position_embedding", "tie_embeddings", "use_bias", "norm_type", "mlp_activation", "num_experts",
          "qk_norm", "attention_pattern")
  changed = [f"model.{k} {source[k]!r} -> {target[k]!r}" for k in keys if source[k] != target[k]]
  return "; ".join(changed) or "no architecture field differs"


def fit(source_shapes: dict[str, tuple[int, ...]], target_shapes: dict[str, tuple[int, ...]],
        target_axes: dict[str, tuple], resize: bool) -> tuple[list[str], list[str]]:
  """(problems, resized names): each parameter name whose shape or presence differs between source and target.

  A difference only along resizable axes (RESIZABLE_AXES, the rows of the position table) is a problem
  unless `resize`; then it is listed as resized. Any other difference is always a problem.
  """
  problems, resized = [], []
  for name in sorted(source_shapes.keys() | target_shapes.keys()):
    if name not in target_shapes:
      problems.append(f"{name}: in the source, not in this config's model")
      continue
    if name not in source_shapes:
      problems.append(f"{name}: in this config's model, not in the source")
      continue
    have, want = source_shapes[name], target_shapes[name]
    if have == want:
      continue
    axes = target_axes[name]
    fixable = len(have) == len(want) and all(
        a == b or axes[i] in RESIZABLE_AXES or (name == POSITION_TABLE and i == 0)
        for i, (a, b) in enumerate(zip(have, want)))
    if fixable and resize:
      resized.append(f"{name}: {have} -> {want}")
    else:
      problems.append(f"{name}: source {have}, this config {want}" + (" (train.init_resize copies what fits)"
                                                                        if fixable else ""))
  return problems, resized


def _named(tree: Any) -> dict[str, Any]:
  return {f"params/{name}": leaf for name, leaf in checkpoint_lib.leaf_names(tree).items()}


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def load_params(config: ml_collections.ConfigDict, source: Source, trainer: Any, fresh_params: Any,
                log: Callable[[str], None]) -> Any:
  """The source's parameters laid out as the new run's (`trainer.state_shardings.params`, model.param_dtype).

  fresh_params: the new run's freshly initialised parameters (kept where train.init_resize grows a tensor).
  Raises:
    ConfigError: the shapes do not fit (every mismatched parameter named, with the model fields that differ).
  """
  from lm import interchange  # pylint: disable=import-outside-toplevel
  from lm import load  # pylint: disable=import-outside-toplevel  # load imports train, which imports this module

  if source.kind == "run":
    try:
      loaded = load.load_run(source.directory, source.step, log=log)
    except config_lib.ConfigError as e:
      raise _error(str(e)) from None
    params, step = loaded.params, loaded.step
  else:
    try:
      params, step = interchange.read_tensors(source.directory, source.config.model), None
    except interchange.InterchangeError as e:
      raise _error(str(e)) from None
  sources = _named(params)
  targets = _named(fresh_params)
  axes = {name: tuple(spec) for name, spec in _named(trainer.param_axes).items()}
  problems, resized = fit({k: tuple(v.shape) for k, v in sources.items()},
                          {k: tuple(v.shape) for k, v in targets.items()}, axes, config.train.init_resize)
  if problems:
    shown = "\n  ".join(problems[:30]) + (f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else "")
    raise _error(f"the parameters of {source.describe()} do not fit this config's model "
                 f"({_model_differences(source.config.model, config.model)}):\n  {shown}")
  dtype = np.dtype(config.model.param_dtype)
  shardings = _named(trainer.state_shardings.params)
  placed = {}
  for name, target in targets.items():
    value = sources[name]
    if tuple(value.shape) == tuple(target.shape):
      placed[name] = jax.device_put(value.astype(dtype) if isinstance(value, jax.Array) else np.asarray(value, dtype),
                                    shardings[name])
      continue
    host = _to_host(target).astype(dtype)  # fresh values where the source has none
    value = _to_host(value) if isinstance(value, jax.Array) else np.asarray(value)
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(value.shape, host.shape))
    host[overlap] = value[overlap]
    placed[name] = jax.make_array_from_callback(host.shape, shardings[name], lambda index, h=host: h[index])
  log(f"initialised from {source.describe()}" + (f" (step {step})" if step is not None else "") +
      f": {len(placed)} parameter tensors; optimizer state, step and data position fresh" +
      (f"; resized: {', '.join(resized)}" if resized else ""))
  leaves = [placed[name] for name in targets]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh_params), leaves)
