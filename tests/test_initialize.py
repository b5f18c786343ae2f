"""lm.initialize: a new run from an existing model's parameters (continued pre-training, context extension)."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from lm import config as config_lib
from lm import initialize
from lm import interchange
from lm import load
from lm import run_dir as run_dir_lib
from lm import sharding
from lm import train


def continued(trained_run, tmp_path, **train_fields):
  """The trained run's config as a new run in tmp_path that starts from it."""
  config = run_dir_lib.load_config(trained_run)
  config.train.run_dir = str(tmp_path / "continued")
  config.train.init_from = trained_run
  config.train.update(train_fields)
  config.eval.tasks = ()
  return config


def metrics(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_step_0_reproduces_the_checkpoint_validation_loss(trained_run, tmp_path):
  source_dir = str(tmp_path / "source")  # a copy: it is deleted before the relaunch
  shutil.copytree(trained_run, source_dir)
  config = continued(source_dir, tmp_path)
  config.train.steps, config.optim.warmup_steps = 4, 2
  config.eval.at_start, config.eval.every_steps = True, 4
  config.data.replay_sources, config.data.replay_fraction = ("docs",), 0.25  # code is the "new" domain here
  result = train.run(config)
  with open(os.path.join(trained_run, "result.json")) as f:
    source = json.load(f)
  records = metrics(config.train.run_dir)
  first_eval = next(r for r in records if "eval/loss" in r)
  assert first_eval["step"] == 0
  assert first_eval["eval/loss"] == source["val_loss"]  # exactly: the same parameters on the same rows
  for name in ("code", "docs"):  # both domains are monitored from step 0
    assert f"eval/{name}/loss" in first_eval
  assert first_eval["eval/original/loss"] == first_eval["eval/docs/loss"]
  assert first_eval["eval/new/loss"] == first_eval["eval/code/loss"]
  shares = [r["data/docs/share"] for r in records if "data/docs/share" in r]
  assert shares[-1] == pytest.approx(0.25, abs=0.07)  # 4 steps of 8 rows
  event = next(r for r in records if r.get("event") == "initialized_from")
  assert event["source"] == source_dir and event["kind"] == "run"
  # A fresh schedule: warmup from 0 to 0.2 x the source's peak.
  source_peak = run_dir_lib.load_config(source_dir).optim.peak_learning_rate
  rates = [r["train/learning_rate"] for r in records if "train/learning_rate" in r]
  assert rates[0] == 0.0 and max(rates) == pytest.approx(0.2 * source_peak)
  assert run_dir_lib.load_config(config.train.run_dir).optim.peak_learning_rate == pytest.approx(0.2 * source_peak)
  assert result["step"] == 4 and result["resumed_from"] is None
  # A relaunch resumes the new run's own checkpoint and needs the source no more.
  shutil.rmtree(source_dir)
  assert train.run(config)["resumed_from"] == 4
  assert run_dir_lib.load_config(config.train.run_dir).optim.peak_learning_rate == pytest.approx(0.2 * source_peak)


def build(config):
  config = config_lib.for_platform(config, jax.default_backend())
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  return config, trainer, trainer.init_state(jax.random.PRNGKey(1)).params


def test_parameters_equal_the_source_and_optimizer_is_fresh(trained_run, tmp_path):
  loaded = load.load_run(trained_run)
  step_dir = os.path.join(trained_run, "checkpoints", str(loaded.step))
  config, trainer, fresh = build(continued(trained_run, tmp_path, init_from=step_dir))
  source = initialize.find_source(step_dir, config)
  assert (source.kind, source.step, source.directory) == ("run", loaded.step, trained_run)
  params = initialize.load_params(config, source, trainer, fresh, log=lambda _: None)
  for ours, theirs in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_shape_changes_are_refused_with_the_names(trained_run, tmp_path):
  config = continued(trained_run, tmp_path)
  config.model.num_layers, config.model.vocab_size = 3, 640
  config, trainer, fresh = build(config)
  source = initialize.find_source(trained_run, config)
  with pytest.raises(config_lib.ConfigError) as error:
    initialize.load_params(config, source, trainer, fresh, log=lambda _: None)
  message = str(error.value)
  assert "train.init_from" in message and "model.vocab_size 512 -> 640; model.num_layers 2 -> 3" in message
  assert "params/embed/embedding: source (512, 64), this config (640, 64) (train.init_resize copies" in message
  assert "params/blocks/layer_0/mlp/up: source (2, 64, 128), this config (3, 64, 128)" in message


def test_resize_copies_what_fits(trained_run, tmp_path):
  config = continued(trained_run, tmp_path, init_resize=True)
  config.model.num_layers, config.model.vocab_size = 3, 640
  config, trainer, fresh = build(config)
  source = initialize.find_source(trained_run, config)
  messages = []
  params = initialize.load_params(config, source, trainer, fresh, log=messages.append)
  theirs = load.load_run(trained_run).params
  embed = np.asarray(params["embed"]["embedding"])
  np.testing.assert_array_equal(embed[:512], np.asarray(theirs["embed"]["embedding"]))
  np.testing.assert_array_equal(embed[512:], np.asarray(fresh["embed"]["embedding"])[512:])
  kernel = np.asarray(params["blocks"]["layer_0"]["mlp"]["up"])  # [layers, ...]
  np.testing.assert_array_equal(kernel[:2], np.asarray(theirs["blocks"]["layer_0"]["mlp"]["up"]))
  np.testing.assert_array_equal(kernel[2], np.asarray(fresh["blocks"]["layer_0"]["mlp"]["up"])[2])
  assert "resized: " in messages[-1] and "params/embed/embedding: (512, 64) -> (640, 64)" in messages[-1]


def test_resize_never_covers_the_width(trained_run, tmp_path):
  config = continued(trained_run, tmp_path, init_resize=True)
  config.model.d_model, config.model.num_heads, config.model.ffn_dim = 96, 6, 192
  config, trainer, fresh = build(config)
  with pytest.raises(config_lib.ConfigError, match=r"model.d_model 64 -> 96.*\n  params/"):
    initialize.load_params(config, initialize.find_source(trained_run, config), trainer, fresh, log=lambda _: None)


def test_hugging_face_source(trained_run, tmp_path):
  """A Llama run exported to Hugging Face and read back as init_from gives the same parameters."""
  out = str(tmp_path / "hf")
  interchange.export(trained_run, out, log=lambda _: None)
  config, trainer, fresh = build(continued(trained_run, tmp_path, init_from=out))
  source = initialize.find_source(out, config)
  assert source.kind == "huggingface" and source.peak_learning_rate is None
  assert source.tokenizer_hash == initialize.find_source(trained_run, config).tokenizer_hash
  params = initialize.load_params(config, source, trainer, fresh, log=lambda _: None)
  for ours, theirs in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(load.load_run(trained_run).params)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  # The learning-rate fraction applies to this config's peak when the source has none.
  resolved = initialize.resolve_learning_rate(config, source)
  assert resolved.optim.peak_learning_rate == pytest.approx(0.2 * config.optim.peak_learning_rate)


def test_another_tokenizer_is_refused(trained_run, tmp_path):
  config = continued(trained_run, tmp_path)
  source = dataclasses.replace(initialize.find_source(trained_run, config), tokenizer_hash="0" * 64)
  run_dir = config.train.run_dir
  os.makedirs(run_dir)
  initialize.place_tokenizer(config.copy_and_resolve_references(), source, run_dir)  # tokens_dir set: not placed
  assert not os.path.exists(os.path.join(run_dir, "tokenizer"))
  shutil.copytree(os.path.join(trained_run, "tokenizer"), os.path.join(run_dir, "tokenizer"))
  with pytest.raises(config_lib.ConfigError, match="written with another tokenizer"):
    initialize.check_tokenizer(config, source, run_dir, config.data.tokens_dir)


@pytest.mark.parametrize("path,message", [
    ("/nonexistent/run", "is not a directory"),
    ("{tmp}", "has no config.json"),
])
def test_bad_sources_are_named(path, message, tmp_path, trained_run):
  config = continued(trained_run, tmp_path)
  with pytest.raises(config_lib.ConfigError, match=f"train.init_from: .*{message}"):
    initialize.find_source(path.format(tmp=tmp_path), config)


def test_tokenizing_at_launch_uses_the_source_tokenizer(trained_run, tmp_path):
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  config = continued(trained_run, tmp_path)
  config.data.tokens_dir = ""  # tokenize data.path at launch: with the source's tokenizer, not a new one
  source = initialize.find_source(trained_run, config)
  run_dir = str(tmp_path / "new")
  initialize.place_tokenizer(config, source, run_dir)
  assert tokenizer_lib.model_hash(os.path.join(run_dir, "tokenizer")) == source.tokenizer_hash
  config.model.vocab_size = 640  # a resized vocabulary needs its own tokenizer: none is placed
  initialize.place_tokenizer(config, source, str(tmp_path / "other"))
  assert not os.path.exists(tmp_path / "other" / "tokenizer")
