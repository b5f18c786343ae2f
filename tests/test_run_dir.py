"""What a relaunch into an existing run directory may change, and the launch record."""

import json

import pytest

from lm import config as config_lib
from lm import run_dir
from lm import train


def _saved(config):
  return json.loads(config.to_json())


def test_learning_rate_steps_and_runtime_fields_may_change_and_are_reported(tiny_config):
  saved = _saved(tiny_config)
  tiny_config.optim.peak_learning_rate = 1e-4
  tiny_config.train.steps = 500
  tiny_config.model.attention_impl = "blockwise"  # same parameters, another kernel
  tiny_config.data.num_workers = 2
  changed = run_dir.check_relaunch(saved, tiny_config, train.state_layout)
  assert changed == {"data.num_workers": (0, 2), "model.attention_impl": ("auto", "blockwise"),
                     "optim.peak_learning_rate": (0.003, 1e-4), "train.steps": (20, 500)}
  assert run_dir.describe({"train.steps": (20, 500)}) == "train.steps 20 -> 500"


def test_fields_that_change_shapes_are_refused_and_listed(tiny_config):
  saved = _saved(tiny_config)
  tiny_config.model.ffn_dim = 256
  tiny_config.optim.state_dtype = "bfloat16"  # the moments' dtype is part of the state
  tiny_config.optim.peak_learning_rate = 1e-4  # allowed: not listed
  with pytest.raises(config_lib.ConfigError) as error:
    run_dir.check_relaunch(saved, tiny_config, train.state_layout)
  message = str(error.value)
  assert "model.ffn_dim 128 -> 256" in message and "optim.state_dtype 'float32' -> 'bfloat16'" in message
  assert "peak_learning_rate" not in message


def test_data_changes_are_refused(tiny_config):
  saved = _saved(tiny_config)
  tiny_config.data.seq_len = 32
  tiny_config.train.global_batch_size = 16
  with pytest.raises(config_lib.ConfigError, match=r"data.seq_len 64 -> 32, train.global_batch_size 8 -> 16"):
    run_dir.check_relaunch(saved, tiny_config, train.state_layout)


def test_prepare_writes_the_config_and_record_launch_appends(tiny_config, tmp_path):
  assert run_dir.prepare(tiny_config, True, train.state_layout) == {}
  tiny_config.train.steps = 30
  assert run_dir.prepare(tiny_config, True, train.state_layout) == {"train.steps": (20, 30)}
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["train"]["steps"] == 30
  run_dir.record_launch(tiny_config.train.run_dir, {}, None, 1)
  run_dir.record_launch(tiny_config.train.run_dir, {"train.steps": (20, 30)}, 10, 1)
  record = json.loads((tmp_path / "run" / "run.json").read_text())
  assert [launch["resumed_from"] for launch in record["launches"]] == [None, 10]
  assert record["launches"][1]["config_changes"] == {"train.steps": [20, 30]}
  assert "git_revision" in record and "command" in record["launches"][0]
