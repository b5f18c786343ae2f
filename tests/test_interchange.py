"""lm.interchange: export to Hugging Face LlamaForCausalLM (same logits in transformers), import back (same bits)."""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece as spm

from configs import families
from configs import gpt2_tiny
from configs import llama_tiny
from configs import mistral_tiny
from data import loader
from lm import checkpoint as checkpoint_lib
from lm import interchange
from lm import load
from lm import model as model_lib
from lm import run_dir as run_dir_lib
from lm import train


class _Start:
  """The loader position of a run that has read nothing."""

  def state(self):
    return {"step": 0}


def small_llama(run_dir, tie, head_dim, tokens_dir=""):
  """The Llama recipe at a few thousand parameters: 3 layers, 4 query heads sharing 2 key/value heads."""
  config = llama_tiny.get_config()
  families.llama(config, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, ffn_dim=48, vocab_size=512,
                 max_seq_len=64, rope_theta=100.0)  # a small base: far-apart rotation frequencies
  config.model.head_dim = head_dim
  config.model.tie_embeddings = tie
  config.data.tokens_dir = tokens_dir
  config.train.run_dir = str(run_dir)
  return config


def write_run(config, tokenizer_dir, seed):
  """A run directory with a checkpoint at step 0 of random parameters (norm scales too), no training."""
  run_dir = config.train.run_dir
  run_dir_lib.prepare(config, True, train.state_layout)
  shutil.copytree(tokenizer_dir, os.path.join(run_dir, "tokenizer"))
  trainer = train.build(config, load.fitting_mesh(config))
  state = trainer.init_state(jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  # Large enough that attention is far from uniform and the logits are O(1): a mixed-up layout shows.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (1.0 + 0.3 * rng.standard_normal(x.shape) if "scale" in jax.tree_util.keystr(path)
                       else 0.3 * rng.standard_normal(x.shape)).astype(np.float32), jax.device_get(state.params))
  state = state.replace(params=jax.device_put(params, trainer.state_shardings.params))
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), every_steps=1, max_to_keep=3)
  checkpointer.save(0, state, _Start(), force=True)
  checkpointer.close()
  return params


UNTIED, TIED = (False, 16), (True, 8)  # (tie_embeddings, head_dim): heads wider than d_model / num_heads, or not


@pytest.fixture(scope="module", params=[UNTIED, TIED], ids=["untied-wide-heads", "tied"])
def exported(request, tmp_path_factory, tokenizer_dir, tokens_dir):
  """(config, its parameters, export directory) of a random small Llama run exported through the command line."""
  tie, head_dim = request.param
  root = tmp_path_factory.mktemp("interchange")
  config = small_llama(root / "run", tie, head_dim, tokens_dir)
  params = write_run(config, tokenizer_dir, seed=int(tie))
  out = str(root / "hf")
  assert interchange.main(["export", "--run", config.train.run_dir, "--out", out]) == 0
  return config, params, out


def hf_logits(out, tokens):
  """(transformers' LlamaForCausalLM of the export `out`, its float32 logits of int32 `tokens` [batch, seq])."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
  with torch.no_grad():
    return model, model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def our_logits(model_config, params, tokens, **overrides):
  """Our float32 logits [batch, seq, vocab] of `tokens` under `model_config` with `overrides`."""
  m = model_config.copy_and_resolve_references()
  m.update(compute_dtype="float32", **overrides)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  return np.asarray(model_lib.from_config(m).apply({"params": params}, tokens, np.ones_like(tokens), positions)[0])


def test_transformers_computes_the_same_logits(exported):
  pytest.importorskip("transformers")
  pytest.importorskip("torch")
  config, params, out = exported
  with open(os.path.join(out, "config.json")) as f:
    hf = json.load(f)
  assert hf["architectures"] == ["LlamaForCausalLM"] and hf["torch_dtype"] == "float32"
  assert (hf["num_key_value_heads"], hf["head_dim"]) == (2, config.model.head_dim)
  tokens = np.random.default_rng(0).integers(5, 512, size=(3, 40)).astype(np.int32)
  model, theirs = hf_logits(out, tokens)
  assert model.config.tie_word_embeddings == config.model.tie_embeddings
  ours = our_logits(config.model, params, tokens)
  assert np.abs(ours).max() > 1.0  # far from a degenerate comparison
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)


def test_transformers_tokenizer_encodes_as_ours(exported, tokenizer, monkeypatch):
  transformers = pytest.importorskip("transformers")
  try:
    from sentencepiece import sentencepiece_model_pb2  # noqa: F401  # pylint: disable=import-outside-toplevel
  except Exception:  # pylint: disable=broad-except
    # sentencepiece's generated proto needs a newer protobuf runtime than the one installed (which other
    # packages pin); transformers' own copy of the proto reads the same model.
    from transformers.utils import sentencepiece_model_pb2_new  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(importlib.import_module("transformers.convert_slow_tokenizer"), "import_protobuf",
                        lambda error_message="": sentencepiece_model_pb2_new)
  _, _, out = exported
  theirs = transformers.AutoTokenizer.from_pretrained(out)
  for text in ("def read_config(path):\n  return 1", " leading space", "a  b   c\n\n\tx", "12345 naïve – ü 日本"):
    assert theirs(text)["input_ids"] == [tokenizer.bos_id] + tokenizer.encode(text), text
    assert theirs.decode(theirs(text)["input_ids"], skip_special_tokens=True) == text


# One variant is enough here: the sharded-read test compares every imported leaf of both.
@pytest.mark.parametrize("exported", [UNTIED], indirect=True, ids=["untied-wide-heads"])
def test_import_gives_back_the_same_bits(exported, tmp_path):
  config, params, out = exported
  run_dir = str(tmp_path / "imported")
  interchange.import_(out, run_dir, config)
  run = load.load_run(run_dir)
  assert run.step == 0 and run.config.model.to_dict() == config.model.to_dict()
  assert run.tokenizer.sha256 == load.load_run(config.train.run_dir).tokenizer.sha256
  ours, theirs = checkpoint_lib.leaf_names(params), checkpoint_lib.leaf_names(jax.device_get(run.params))
  assert ours.keys() == theirs.keys()
  for name, leaf in ours.items():
    assert theirs[name].dtype == leaf.dtype and np.array_equal(theirs[name], leaf), name
  # A launch into the directory restores it: the saved loader position is that of the config's own stream.
  data_iterator = loader.TrainIterator(train.prepare_data(run.config, run_dir).stream)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), every_steps=1, max_to_keep=3)
  assert checkpointer.restore_latest(run.trainer.abstract_state, data_iterator, print)[0] == 0
  checkpointer.close()
  with pytest.raises(interchange.InterchangeError, match="already holds a run"):
    interchange.import_(out, run_dir, config)


def _rewrite(out, target, tensors_of):
  """A copy of the export `out` in `target` whose tensors are split over two files, changed by `tensors_of`."""
  shutil.copytree(out, target)
  os.remove(os.path.join(target, interchange.WEIGHTS))
  tensors = tensors_of(safetensors.numpy.load_file(os.path.join(out, interchange.WEIGHTS)))
  names = sorted(tensors)
  files = {"part-1.safetensors": names[:len(names) // 2], "part-2.safetensors": names[len(names) // 2:]}
  for file, part in files.items():
    safetensors.numpy.save_file({n: tensors[n] for n in part}, os.path.join(target, file), metadata={"format": "pt"})
  with open(os.path.join(target, interchange.WEIGHTS_INDEX), "w") as f:
    json.dump({"weight_map": {n: file for file, part in files.items() for n in part}}, f)
  return str(target)


def test_sharded_weights_read_as_one_file(exported, tmp_path):
  config, params, out = exported
  sharded = _rewrite(out, tmp_path / "sharded", lambda tensors: tensors)
  read = checkpoint_lib.leaf_names(interchange.read_tensors(sharded, config.model))
  for name, leaf in checkpoint_lib.leaf_names(params).items():
    assert np.array_equal(read[name], leaf), name


def test_tensor_mismatches_are_listed(exported, tmp_path):
  config, _, out = exported

  def damage(tensors):
    del tensors["model.layers.2.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"]
    tensors["model.layers.0.self_attn.q_bias"] = np.zeros(4, np.float32)
    return tensors

  damaged = _rewrite(out, tmp_path / "damaged", damage)
  with pytest.raises(interchange.InterchangeError) as error:
    interchange.import_(damaged, str(tmp_path / "run"), config)
  message = str(error.value)
  assert "missing: model.layers.2.mlp.up_proj.weight" in message
  assert "unexpected: model.layers.0.self_attn.q_bias" in message
  assert "shape: model.layers.0.self_attn.k_proj.weight" in message
  assert not os.path.exists(tmp_path / "run")  # refused before anything is written


def test_other_special_ids_are_refused(exported, tmp_path):
  config, _, out = exported
  target = shutil.copytree(out, tmp_path / "other_tokenizer")
  lines = ["the quick brown fox jumps over the lazy dog", "def f(x):", "return x + 1"] * 50
  # SentencePiece's default ids: <unk> 0, <s> 1, </s> 2 and no pad piece.
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(target / "spm"), vocab_size=50,
                                 hard_vocab_limit=False, minloglevel=2)
  shutil.move(str(target / "spm.model"), str(target / interchange.HF_TOKENIZER))
  with pytest.raises(interchange.InterchangeError, match=r"pad is absent \(ours: id 3\)"):
    interchange.import_(str(target), str(tmp_path / "run"), config)


@pytest.mark.parametrize("make, offending", [
    (gpt2_tiny.get_config, ("model.position_embedding = 'learned'", "model.norm_type = 'layernorm'",
                            "model.use_bias = True", "model.mlp_activation = 'gelu'")),
    (mistral_tiny.get_config, ("model.sliding_window = ", "model.attention_pattern = ('local',)")),
])
def test_export_refuses_other_recipes(make, offending, tmp_path, capsys):
  config = make()
  config.train.run_dir = str(tmp_path / "run")
  run_dir_lib.prepare(config, True, train.state_layout)
  assert interchange.main(["export", "--run", config.train.run_dir, "--out", str(tmp_path / "hf")]) == 2
  message = capsys.readouterr().err
  for text in offending:
    assert text in message
  assert "model.tie_embeddings" not in message and not os.path.exists(tmp_path / "hf")


def test_import_refuses_other_architectures():
  llama = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 48, "vocab_size": 512}
  config = interchange.config_from_hf(llama, llama_tiny.get_config())
  assert (config.model.num_kv_heads, config.model.head_dim, config.model.tie_embeddings) == (4, 8, False)
  scaled = dict(llama, hidden_act="gelu", rope_scaling={"rope_type": "dynamic", "factor": 8.0})
  with pytest.raises(interchange.InterchangeError, match=r"hidden_act = 'gelu'.*rope_type 'dynamic'"):
    interchange.config_from_hf(scaled, llama_tiny.get_config())
  incomplete = dict(llama, rope_scaling={"rope_type": "llama3", "factor": 8.0})
  with pytest.raises(interchange.InterchangeError, match=r"llama3 scaling .*low_freq_factor"):
    interchange.config_from_hf(incomplete, llama_tiny.get_config())


ROPE_SCALINGS = {  # model fields of each scaled RoPE the logit test exports
    "linear": dict(rope_scaling="linear", rope_scaling_factor=4.0),
    "ntk": dict(rope_scaling="ntk", rope_scaling_factor=4.0),
    "yarn": dict(rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_max_seq_len=16,
                 rope_yarn_beta_fast=8.0, rope_yarn_beta_slow=0.5),
    "llama3": dict(rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_seq_len=16,
                   rope_llama3_low_frequency_factor=1.0, rope_llama3_high_frequency_factor=4.0),
}


@pytest.mark.parametrize("scaling", list(ROPE_SCALINGS))
def test_scaled_rope_exports_to_the_same_logits_and_imports_back(scaling, tmp_path, tokenizer_dir, tokens_dir):
  """Scaled RoPE in transformers (its own rope_parameters code) gives our logits, and the config reads back."""
  pytest.importorskip("transformers")
  pytest.importorskip("torch")
  config = small_llama(tmp_path / "run", False, 16, tokens_dir)
  config.model.update(ROPE_SCALINGS[scaling])
  params = write_run(config, tokenizer_dir, seed=3)
  out = str(tmp_path / "hf")
  assert interchange.main(["export", "--run", config.train.run_dir, "--out", out]) == 0
  tokens = np.random.default_rng(1).integers(5, 512, size=(2, 60)).astype(np.int32)
  _, theirs = hf_logits(out, tokens)
  ours = our_logits(config.model, params, tokens)
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
  unscaled = our_logits(config.model, params, tokens, rope_scaling="none", rope_scaling_factor=1.0)
  assert np.abs(unscaled - ours).max() > 1e-2  # the scaling changed the model
  with open(os.path.join(out, "config.json")) as f:
    back = interchange.config_from_hf(json.load(f), llama_tiny.get_config()).model
  if scaling == "ntk":  # written as plain RoPE with the NTK base
    assert back.rope_scaling == "none"
    assert back.rope_theta == pytest.approx(100.0 * 4.0 ** (16 / 14))
  else:
    assert {key: back[key] for key in ROPE_SCALINGS[scaling]} == ROPE_SCALINGS[scaling]
