import pytest

from configs import base, demo, tiny
from lm import config as config_lib


@pytest.mark.parametrize("make", [base.get_config, demo.get_config, tiny.get_config])
def test_shipped_configs_are_valid(make):
  config_lib.validate(make(), num_devices=8)


def test_base_config_is_locked_so_a_misspelt_field_fails_in_the_config_file():
  config = base.get_config()
  with pytest.raises(AttributeError, match="dmodel"):
    config.model.dmodel = 128


def test_unknown_key_is_named():
  config = tiny.get_config()
  config.unlock()
  config.model.num_expert = 4
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'model\.num_expert'"):
    config_lib.validate(config, num_devices=8)


def test_wrong_type_is_named():
  config = tiny.get_config()
  config.unlock()
  del config.train["steps"]
  config.train.steps = "many"
  with pytest.raises(config_lib.ConfigError, match=r"config key 'train\.steps' must be int, got str"):
    config_lib.validate(config, num_devices=8)


def test_missing_data_path_is_named(tmp_path):
  config = tiny.get_config()
  config.data.path = str(tmp_path / "nowhere.jsonl")
  with pytest.raises(config_lib.ConfigError, match="data.path does not exist: .*nowhere.jsonl"):
    config_lib.validate(config, num_devices=8)


def test_batch_not_divisible_by_data_parallel_size_says_both_numbers():
  config = tiny.get_config()
  config.train.global_batch_size = 12
  with pytest.raises(config_lib.ConfigError, match=r"global_batch_size \(12\) is not divisible .* = 8"):
    config_lib.validate(config, num_devices=8)
  config.mesh.data, config.mesh.tensor = 2, 4  # data-parallel size 2 now divides 12
  config.model.num_heads, config.model.num_kv_heads = 8, 4
  config_lib.validate(config, num_devices=8)


def test_mesh_must_match_devices_and_model_must_divide_by_it():
  config = tiny.get_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
  with pytest.raises(config_lib.ConfigError, match=r"mesh.data \* mesh.fsdp \* mesh.tensor = 2\*2\*1 = 4 but there are 8 devices"):
    config_lib.validate(config, num_devices=8)
  config.mesh.data, config.mesh.tensor = 1, 8
  with pytest.raises(config_lib.ConfigError, match=r"model.num_heads \(4\) is not divisible by mesh.tensor \(8\)"):
    config_lib.validate(config, num_devices=16)


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.num_expert=4"], "num_expert"),
    (["--config.train.steps=abc"], "train.steps"),
    (["--config.data.path=/no/such/corpus.jsonl"], "/no/such/corpus.jsonl"),
    (["--config.train.global_batch_size=12"], "(12) is not divisible by the data-parallel size mesh.data x mesh.fsdp = 8 x 1 = 8"),
])
def test_launch_rejects_bad_config_before_training(launch, tmp_path, overrides, message):
  result = launch(tmp_path / "run", *overrides)
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert "step " not in result.stdout
