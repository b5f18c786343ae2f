"""Hugging Face Llama interchange: a run's checkpoint as a `LlamaForCausalLM` directory, and such a directory as a run.

    python -m lm.interchange export --run RUN_DIR [--step S] --out DIR
    python -m lm.interchange import --hf DIR --run NEW_RUN_DIR [--config configs/llama_tiny.py]

Only the Llama recipe (`configs.families.llama`) has a counterpart there: RoPE, pre-norm
RMSNorm, a SwiGLU MLP, no biases, global causal attention and dense layers; tied or untied
output, any number of key/value heads. Both sides rotate queries and keys in the half-split
("rotate_half") layout and give query head h the key/value head h // (heads / kv_heads), so
kernels only change shape: a Hugging Face Linear weight is [outputs, inputs], and ours are
[inputs..., outputs...] (e.g. the query kernel [d_model, heads, head_dim] is the transposed
q_proj weight [heads * head_dim, d_model]).

An export holds config.json, model.safetensors (float32, written without torch) and the
SentencePiece model as tokenizer.model with tokenizer_config.json. An import writes a run
directory that `lm.load.load_run` reads and `lm.launch` continues: config.json (the model
group from the Hugging Face config, every other field from the given config or the base
config), tokenizer/, and a checkpoint at step 0: the imported parameters, a fresh optimizer
state, and the loader at the start of that config's data stream. Import prepares that stream
as a launch would: without data.tokens_dir it tokenizes data.path (or the embedded corpus)
with the imported tokenizer into RUN_DIR/tokens.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
import sentencepiece as spm

from configs import base
from configs import families
from data import loader
from data import tokenizer as tokenizer_lib
from lm import checkpoint as checkpoint_lib
from lm import config as config_lib
from lm import load
from lm import model as model_lib
from lm import run_dir as run_dir_lib
from lm import train

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # name -> file of a checkpoint sharded over several files
HF_CONFIG = "config.json"
HF_TOKENIZER = "tokenizer.model"


class InterchangeError(ValueError):
  """A model, tokenizer or directory that cannot be converted; the message names what and why."""


# The fields that make a config the Llama recipe: model.KEY, whether a value fits, what Llama has.
_LLAMA_FIELDS = (
    ("position_embedding", lambda v: v == "rope", "'rope'"),
    ("norm_type", lambda v: v == "rmsnorm", "'rmsnorm'"),
    ("norm_position", lambda v: v == "pre", "'pre'"),
    ("use_bias", lambda v: not v, "False"),
    ("mlp_activation", lambda v: v == "swiglu", "'swiglu'"),
    ("qk_norm", lambda v: not v, "False"),
    ("attention_logit_softcap", lambda v: v == 0, "0"),
    ("sliding_window", lambda v: v == 0, "0"),
    ("attention_pattern", lambda v: all(kind == "global" for kind in v), "only 'global' layers"),
    ("num_experts", lambda v: v == 0, "0 (dense)"),
    ("objective", lambda v: v == "causal", "'causal'"),
)

# Per layer: the name below model.layers.N, our path below params["blocks"]["layer_G"], and how many leading
# axes of our kernel are its inputs (0: the same array on both sides, as the norm scales).
_LAYER_TENSORS = (
    ("self_attn.q_proj.weight", ("attention", "query"), 1),
    ("self_attn.k_proj.weight", ("attention", "key"), 1),
    ("self_attn.v_proj.weight", ("attention", "value"), 1),
    ("self_attn.o_proj.weight", ("attention", "out"), 2),
    ("mlp.gate_proj.weight", ("mlp", "gate"), 1),
    ("mlp.up_proj.weight", ("mlp", "up"), 1),
    ("mlp.down_proj.weight", ("mlp", "down"), 1),
    ("input_layernorm.weight", ("attention_norm", "scale"), 0),
    ("post_attention_layernorm.weight", ("mlp_norm", "scale"), 0),
)
# Buffers some checkpoints carry that are not parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def check_exportable(m: ml_collections.ConfigDict) -> None:
  """Raises InterchangeError naming every field of `config.model` that is not the Llama recipe."""
  problems = [f"model.{key} = {m[key]!r} (Llama: {need})" for key, fits, need in _LLAMA_FIELDS if not fits(m[key])]
  if problems:
    raise InterchangeError("only the Llama recipe converts to LlamaForCausalLM; this config has "
                           + "; ".join(problems))


def tensor_names(m: ml_collections.ConfigDict) -> dict[str, tuple[tuple[str, ...], int | None, int]]:
  """Hugging Face tensor name -> (path in our params, index on its scanned layer axis or None, input axes)."""
  group = model_lib.group_size(m)  # all-global dense layers: the length of the attention pattern
  names = {"model.embed_tokens.weight": (("embed", "embedding"), None, 0),
           "model.norm.weight": (("final_norm", "scale"), None, 0)}
  if not m.tie_embeddings:
    names["lm_head.weight"] = (("unembed",), None, 1)
  for layer in range(m.num_layers):
    for name, path, inputs in _LAYER_TENSORS:
      names[f"model.layers.{layer}.{name}"] = (("blocks", f"layer_{layer % group}") + path, layer // group, inputs)
  return names


def to_hf(x: np.ndarray, inputs: int) -> np.ndarray:
  """Our [inputs..., outputs...] kernel -> the [prod(outputs), prod(inputs)] Linear weight (inputs 0: unchanged)."""
  return x if inputs == 0 else x.reshape(math.prod(x.shape[:inputs]), -1).T


def hf_shape(shape: Sequence[int], inputs: int) -> tuple[int, ...]:
  """The Hugging Face shape of our array of `shape` (see `to_hf`)."""
  return tuple(shape) if inputs == 0 else (math.prod(shape[inputs:]), math.prod(shape[:inputs]))


def _leaf(params: dict, path: tuple[str, ...]) -> Any:
  for key in path:
    params = params[key]
  return params


def hf_rope(m: ml_collections.ConfigDict) -> dict[str, Any]:
  """`rope_theta` and `rope_parameters` (transformers 5; `rope_scaling`, its transformers 4 name, too when scaled)
  of `config.model`'s RoPE and its scaling. NTK-aware scaling is plain RoPE with a larger base, written as such."""
  theta, s = m.rope_theta, m.rope_scaling_factor
  scaling = m.rope_scaling if s != 1.0 else "none"
  if scaling == "ntk":
    theta, scaling = theta * s ** (m.head_dim / (m.head_dim - 2)), "none"
  parameters: dict[str, Any] = {"rope_type": "default" if scaling == "none" else scaling, "rope_theta": theta}
  if scaling != "none":
    parameters["factor"] = s
  if scaling in ("yarn", "llama3"):
    parameters["original_max_position_embeddings"] = m.rope_original_max_seq_len
  if scaling == "yarn":
    parameters.update(beta_fast=m.rope_yarn_beta_fast, beta_slow=m.rope_yarn_beta_slow)
  if scaling == "llama3":
    parameters.update(low_freq_factor=m.rope_llama3_low_frequency_factor,
                      high_freq_factor=m.rope_llama3_high_frequency_factor)
  out = {"rope_theta": theta, "rope_parameters": parameters}
  if scaling != "none":
    out["rope_scaling"] = {k: v for k, v in parameters.items() if k != "rope_theta"}
  return out


def _rope_fields(rope: dict[str, Any], max_position_embeddings: int) -> tuple[dict[str, Any], str | None]:
  """(model fields, problem or None) of a Hugging Face `rope_parameters` / `rope_scaling` dict."""
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type == "default":
    return {"rope_scaling": "none", "rope_scaling_factor": 1.0}, None
  supported = {"linear": (), "yarn": ("beta_fast", "beta_slow", "original_max_position_embeddings", "truncate"),
               "llama3": ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
  if rope_type not in supported:
    return {}, f"rope_type {rope_type!r} (supported: default, linear, yarn, llama3)"
  unknown = sorted(set(rope) - {"rope_type", "type", "rope_theta", "factor", *supported[rope_type]})
  missing = rope.get("factor") is None or (rope_type == "llama3" and not {"low_freq_factor", "high_freq_factor"} <= set(rope))
  if unknown or missing or rope.get("truncate", True) is not True:
    return {}, f"{rope_type} scaling with {rope!r} (supported keys: factor, {', '.join(supported[rope_type])}; truncate true)"
  fields = {"rope_scaling": rope_type, "rope_scaling_factor": float(rope["factor"]),
            "rope_original_max_seq_len": int(rope.get("original_max_position_embeddings", max_position_embeddings))}
  if rope_type == "yarn":
    fields.update(rope_yarn_beta_fast=float(rope.get("beta_fast", 32.0)), rope_yarn_beta_slow=float(rope.get("beta_slow", 1.0)))
  if rope_type == "llama3":
    fields.update(rope_llama3_low_frequency_factor=float(rope["low_freq_factor"]),
                  rope_llama3_high_frequency_factor=float(rope["high_freq_factor"]))
  return fields, None


def hf_config(m: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer) -> dict[str, Any]:
  """The LlamaForCausalLM config.json of `config.model` (rope_theta both where transformers 4 and 5 read it)."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": m.vocab_size,
      "hidden_size": m.d_model, "intermediate_size": m.ffn_dim, "num_hidden_layers": m.num_layers,
      "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads, "head_dim": m.head_dim,
      "hidden_act": "silu", "rms_norm_eps": m.norm_eps, "max_position_embeddings": m.max_seq_len,
      **hf_rope(m),
      "tie_word_embeddings": m.tie_embeddings, "attention_bias": False, "mlp_bias": False,
      "attention_dropout": 0.0, "initializer_range": m.init_std, "use_cache": True,
      "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
      "torch_dtype": "float32",
  }


def _write_hf_tokenizer(tokenizer: tokenizer_lib.Tokenizer, tokenizer_dir: str, out_dir: str, max_len: int) -> None:
  """tokenizer.model (our spm.model) and the files that let transformers' LlamaTokenizer load it."""
  shutil.copyfile(os.path.join(tokenizer_dir, tokenizer_lib.MODEL_FILE), os.path.join(out_dir, HF_TOKENIZER))
  piece = tokenizer.processor.id_to_piece
  special = {"unk_token": piece(tokenizer_lib.UNK_ID), "bos_token": piece(tokenizer.bos_id),
             "eos_token": piece(tokenizer.eos_id), "pad_token": piece(tokenizer.pad_id)}
  if tokenizer.mask_id is not None:
    special["mask_token"] = piece(tokenizer.mask_id)
  # Our model has no dummy-prefix space and an identity normaliser: text is encoded exactly as written,
  # with BOS first as our sampling prompts are.
  settings = {"tokenizer_class": "LlamaTokenizer", **special, "add_bos_token": True, "add_eos_token": False,
              "add_prefix_space": False, "legacy": True, "clean_up_tokenization_spaces": False,
              "model_max_length": max_len, "sp_model_kwargs": {}}
  for name, content in (("tokenizer_config.json", settings), ("special_tokens_map.json", special)):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      json.dump(content, f, indent=2, ensure_ascii=False)


def export(run_dir: str, out_dir: str, step: int | None = None, log: Callable[[str], None] = print) -> str:
  """Writes the checkpoint at `step` (None = the newest sound one) of `run_dir` as a LlamaForCausalLM directory.

  Raises:
    InterchangeError: the run's model is not the Llama recipe (every offending field named).
    ConfigError: no run, tokenizer or checkpoint there.
  """
  check_exportable(run_dir_lib.load_config(run_dir).model)  # before reading a checkpoint
  run = load.load_run(run_dir, step, log)
  m = run.config.model
  params = jax.device_get(run.params)
  tensors = {}
  for name, (path, index, inputs) in tensor_names(m).items():
    leaf = np.asarray(_leaf(params, path), np.float32)
    tensors[name] = np.ascontiguousarray(to_hf(leaf if index is None else leaf[index], inputs))
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, HF_CONFIG), "w") as f:
    json.dump(hf_config(m, run.tokenizer), f, indent=2)
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
  _write_hf_tokenizer(run.tokenizer, os.path.join(run.run_dir, "tokenizer"), out_dir, m.max_seq_len)
  log(f"exported step {run.step} of {run.run_dir} ({sum(t.size for t in tensors.values()):,} parameters) "
      f"to {out_dir}")
  return out_dir


def config_from_hf(hf: dict[str, Any], config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose architecture fields are those of the Hugging Face `hf` config (data.seq_len at most
  its context length); run-time model fields (dtypes, remat, attention kernel) stay as in `config`.

  Raises:
    InterchangeError: `hf` is not a Llama model this code computes the same way (every offending key named).
  """
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_fields, rope_problem = _rope_fields(rope, hf.get("max_position_embeddings", 2048))
  problems = [f"{key} = {hf.get(key)!r} (supported: {want!r})" for key, want in
              (("model_type", "llama"), ("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False))
              if hf.get(key, want) != want]
  if rope_problem:
    problems.append(rope_problem)
  if problems:
    raise InterchangeError("the Hugging Face config is not a plain Llama model: " + "; ".join(problems))
  heads = hf["num_attention_heads"]
  config = copy.deepcopy(config)
  families.llama(config, d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
                 num_kv_heads=hf.get("num_key_value_heads") or heads, ffn_dim=hf["intermediate_size"],
                 vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                 rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))))
  m = config.model
  m.head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  m.norm_eps = float(hf.get("rms_norm_eps", 1e-6))  # transformers' LlamaConfig defaults
  m.tie_embeddings = bool(hf.get("tie_word_embeddings", False))
  m.init_std = float(hf.get("initializer_range", m.init_std))
  m.qk_norm, m.attention_logit_softcap, m.objective = False, 0.0, "causal"
  m.update(rope_fields)
  config.data.seq_len = min(config.data.seq_len, m.max_seq_len)
  return config


def _read_tokenizer(hf_dir: str, vocab_size: int) -> tuple[bytes, dict[str, Any]]:
  """(tokenizer.model bytes, our tokenizer.json for them) of `hf_dir`.

  Raises:
    InterchangeError: no tokenizer.model, special ids other than ours, or another vocabulary size.
  """
  path = os.path.join(hf_dir, HF_TOKENIZER)
  if not os.path.exists(path):
    raise InterchangeError(f"{hf_dir} has no {HF_TOKENIZER}: only SentencePiece tokenizers can be imported")
  with open(path, "rb") as f:
    model = f.read()
  try:
    processor = spm.SentencePieceProcessor(model_proto=model)
  except RuntimeError as e:
    raise InterchangeError(f"{path} is not a SentencePiece model ({e})") from None
  ours = {"unk": tokenizer_lib.UNK_ID, "bos": tokenizer_lib.BOS_ID, "eos": tokenizer_lib.EOS_ID,
          "pad": tokenizer_lib.PAD_ID}
  theirs = {"unk": processor.unk_id(), "bos": processor.bos_id(), "eos": processor.eos_id(), "pad": processor.pad_id()}
  wrong = [f"{name} is {'absent' if theirs[name] < 0 else f'id {theirs[name]}'} (ours: id {ours[name]})"
           for name in ours if theirs[name] != ours[name]]
  if wrong:
    raise InterchangeError(f"{path} has other special ids than this code packs and pads with: " + ", ".join(wrong))
  if processor.get_piece_size() != vocab_size:
    raise InterchangeError(f"{path} has {processor.get_piece_size()} pieces but config.json has vocab_size "
                           f"{vocab_size}; they must be equal")
  mask = tokenizer_lib.MASK_ID  # optional: only the masked objective needs it
  if not (vocab_size > mask and processor.is_control(mask) and processor.id_to_piece(mask) == tokenizer_lib.MASK_PIECE):
    mask = None
  meta = {"vocab_size": vocab_size, "byte_fallback": any(processor.is_byte(i) for i in range(vocab_size)),
          **{f"{name}_id": ours[name] for name in ours}, "mask_id": mask,
          **{f"{name}_piece": processor.id_to_piece(ours[name]) for name in ours},
          "mask_piece": None if mask is None else tokenizer_lib.MASK_PIECE,
          "sha256": hashlib.sha256(model).hexdigest(), "imported_from": os.path.abspath(path)}
  return model, meta


def _limited(lines: list[str], limit: int = 20) -> str:
  return "\n  ".join(lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else []))


def read_tensors(hf_dir: str, m: ml_collections.ConfigDict) -> dict:
  """Our parameter tree (numpy, `model.param_dtype`) of the safetensors in `hf_dir` (one file, or sharded).

  Raises:
    InterchangeError: listing every missing, unexpected or misshapen tensor.
  """
  index_path = os.path.join(hf_dir, WEIGHTS_INDEX)
  if os.path.exists(index_path):
    with open(index_path) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.exists(os.path.join(hf_dir, WEIGHTS)):
    files = [WEIGHTS]
  else:
    raise InterchangeError(f"{hf_dir} has neither {WEIGHTS} nor {WEIGHTS_INDEX}")
  found: dict[str, tuple[str, tuple[int, ...]]] = {}  # name -> (file, shape)
  for file in files:
    with safetensors.safe_open(os.path.join(hf_dir, file), framework="numpy") as f:
      for name in f.keys():
        found[name] = (file, tuple(f.get_slice(name).get_shape()))
  params = jax.tree_util.tree_map(lambda s: np.empty(s.shape, s.dtype),
                                  nn.meta.unbox(model_lib.abstract_params(m)))
  names = tensor_names(m)
  problems = [f"missing: {name}" for name in names if name not in found]
  for name, (file, shape) in found.items():
    if name not in names:
      if not name.endswith(_IGNORED_SUFFIXES) and not (name == "lm_head.weight" and m.tie_embeddings):
        problems.append(f"unexpected: {name} (in {file})")
      continue
    path, index, inputs = names[name]
    ours = _leaf(params, path).shape[0 if index is None else 1:]
    if shape != hf_shape(ours, inputs):
      problems.append(f"shape: {name} is {list(shape)} in {file}, the config needs {list(hf_shape(ours, inputs))}")
  if problems:
    raise InterchangeError(f"the tensors of {hf_dir} do not fit its config.json:\n  {_limited(problems)}")
  for file in files:
    with safetensors.safe_open(os.path.join(hf_dir, file), framework="numpy") as f:
      for name in (n for n in names if found[n][0] == file):
        path, index, inputs = names[name]
        target = _leaf(params, path) if index is None else _leaf(params, path)[index]  # a view: filled in place
        target[...] = f.get_tensor(name).T.reshape(target.shape) if inputs else f.get_tensor(name)
  if m.tie_embeddings and "lm_head.weight" in found:  # a tied copy written out anyway
    with safetensors.safe_open(os.path.join(hf_dir, found["lm_head.weight"][0]), framework="numpy") as f:
      if not np.array_equal(f.get_tensor("lm_head.weight"), params["embed"]["embedding"]):
        raise InterchangeError(f"{hf_dir}: lm_head.weight differs from model.embed_tokens.weight, but "
                               "tie_word_embeddings is true")
  return params


def write_tokenizer(hf_dir: str, vocab_size: int, tokenizer_dir: str) -> None:
  """Writes the SentencePiece tokenizer of `hf_dir` as our tokenizer directory (see `_read_tokenizer`)."""
  spm_model, meta = _read_tokenizer(hf_dir, vocab_size)
  os.makedirs(tokenizer_dir, exist_ok=True)
  with open(os.path.join(tokenizer_dir, tokenizer_lib.MODEL_FILE), "wb") as f:
    f.write(spm_model)
  with open(os.path.join(tokenizer_dir, tokenizer_lib.META_FILE), "w", encoding="utf-8") as f:  # last: complete
    json.dump(meta, f, indent=2, ensure_ascii=False)


def import_(hf_dir: str, run_dir: str, config: ml_collections.ConfigDict | None = None,
            log: Callable[[str], None] = print) -> str:
  """Writes a new run directory holding the LlamaForCausalLM of `hf_dir` as its checkpoint at step 0.

  Args:
    hf_dir: config.json, model.safetensors (or shards with model.safetensors.index.json), tokenizer.model.
    run_dir: where the run is written; must not hold a run yet.
    config: the run settings (data, optimizer, mesh, ...); None = configs/base.py. Its model group is replaced.

  Raises:
    InterchangeError: see `config_from_hf`, `read_tensors`; a tokenizer with other special ids; run_dir in use.
    ConfigError: the config's data does not fit the imported tokenizer or model.
  """
  run_dir = os.path.abspath(run_dir)
  if os.path.exists(os.path.join(run_dir, run_dir_lib.CONFIG)) or os.path.exists(os.path.join(run_dir, "checkpoints")):
    raise InterchangeError(f"{run_dir} already holds a run; import into a new directory")
  with open(os.path.join(hf_dir, HF_CONFIG)) as f:
    config = config_from_hf(json.load(f), base.get_config() if config is None else config)
  config.train.run_dir = run_dir
  _read_tokenizer(hf_dir, config.model.vocab_size)  # refused before any tensor is read
  params = read_tensors(hf_dir, config.model)
  write_tokenizer(hf_dir, config.model.vocab_size, os.path.join(run_dir, "tokenizer"))
  # The checkpoint's loader position must be that of the stream a launch of this config builds, or the
  # launch refuses it as another data stream.
  data_iterator = loader.TrainIterator(train.prepare_data(config, run_dir).stream)
  trainer = train.build(config, load.fitting_mesh(config))
  state = trainer.init_state(jax.random.PRNGKey(config.train.seed))
  state = state.replace(params=jax.device_put(params, trainer.state_shardings.params))
  run_dir_lib.prepare(config, True, train.state_layout)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), config.checkpoint.every_steps,
                                             config.checkpoint.max_to_keep, config.checkpoint.keep_every_steps)
  try:
    checkpointer.save(0, state, data_iterator, force=True)
  finally:
    checkpointer.close()
  log(f"imported {hf_dir} ({sum(x.size for x in jax.tree_util.tree_leaves(params)):,} parameters) into {run_dir} "
      "as step 0")
  return run_dir


def _config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (configs/NAME.py)."""
  spec = importlib.util.spec_from_file_location("run_config", path)
  if spec is None or spec.loader is None:
    raise InterchangeError(f"{path} is not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lm.interchange", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  export_parser = commands.add_parser("export", help="a run's checkpoint -> a LlamaForCausalLM directory")
  export_parser.add_argument("--run", required=True, help="run directory")
  export_parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest sound one)")
  export_parser.add_argument("--out", required=True, help="directory to write")
  import_parser = commands.add_parser("import", help="a LlamaForCausalLM directory -> a new run directory")
  import_parser.add_argument("--hf", required=True, help="Hugging Face model directory")
  import_parser.add_argument("--run", required=True, help="new run directory")
  import_parser.add_argument("--config", default="", help="config file of the run settings (default: the base config)")
  args = parser.parse_args(argv)
  try:
    if args.command == "export":
      export(args.run, args.out, args.step)
    else:
      import_(args.hf, args.run, _config_file(args.config) if args.config else None)
  except (config_lib.ConfigError, ValueError, OSError) as e:  # InterchangeError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
