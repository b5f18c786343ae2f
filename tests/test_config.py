import pytest

from configs import base, demo, tiny
from lm import config as config_lib
from lm import sharding


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
  with pytest.raises(config_lib.ConfigError, match=r"global_batch_size \(12\) must be a multiple of the 8 processes"):
    config_lib.validate(config, num_devices=8, process_count=8)


def test_mesh_must_match_devices_and_model_must_divide_by_it():
  config = tiny.get_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
  with pytest.raises(config_lib.ConfigError,
                     match=r"mesh.data \* mesh.fsdp \* mesh.expert \* mesh.tensor = 2\*2\*1\*1 = 4 but there are 8"):
    config_lib.validate(config, num_devices=8)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 8
  with pytest.raises(config_lib.ConfigError, match=(
      r"parameter blocks/layer_0/attention/key of shape \(2, 64, 2, 16\): dimension 2 \('kv_heads', size 2\) is "
      r"not divisible by mesh tensor=8 = 8 under the rule \('kv_heads', 'tensor'\) of mesh.rules")):
    config_lib.validate(config, num_devices=8)
  config.mesh.tensor, config.mesh.fsdp = 1, 8
  config.model.d_model = 60
  config.model.num_heads = 4
  with pytest.raises(config_lib.ConfigError, match=r"parameter blocks/layer_0/attention/key of shape "
                     r"\(2, 60, 2, 16\): dimension 1 \('embed', size 60\) .* \('embed', 'fsdp'\)"):
    config_lib.validate(config, num_devices=8)


def test_rules_must_name_mesh_axes():
  config = tiny.get_config()
  config.mesh.rules = tuple(config.mesh.rules) + (("heads", "model"),)
  with pytest.raises(config_lib.ConfigError,
                     match=r"mesh.rules entry \('heads', 'model'\): mesh axis 'model' is not one of data, fsdp"):
    config_lib.validate(config, num_devices=8)


def test_across_slice_sizes_multiply_the_mesh():
  config = tiny.get_config()
  config.mesh.fsdp, config.mesh.dcn_data = 2, 2
  config_lib.validate(config, num_devices=8)  # data 2 per slice x 2 slices, fsdp 2
  assert sharding.mesh_shape(config.mesh, 8) == (4, 2, 1, 1)
  mesh = sharding.make_mesh(config.mesh)
  # Slices are outermost on the data axis: its first half lies on the first slice's devices.
  assert {d.id for d in mesh.devices[:2].reshape(-1)} == {0, 1, 2, 3}
  config.mesh.dcn_data = 3
  with pytest.raises(config_lib.ConfigError, match=r"3 slices does not divide the 8 devices"):
    config_lib.validate(config, num_devices=8)


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.num_expert=4"], "num_expert"),
    (["--config.train.steps=abc"], "train.steps"),
    (["--config.data.path=/no/such/corpus.jsonl"], "/no/such/corpus.jsonl"),
    (["--config.train.global_batch_size=12"], "(12) is not divisible by the data-parallel size data x fsdp x expert = 8 x 1 x 1 = 8"),
])
def test_launch_rejects_bad_config_before_training(launch, tmp_path, overrides, message):
  result = launch(tmp_path / "run", *overrides)
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert "step " not in result.stdout


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=60, num_heads=8), r"model.d_model \(60\) must be divisible by model.num_heads \(8\)"),
    (dict(num_heads=4, num_kv_heads=3), r"model.num_heads \(4\) must be a multiple of model.num_kv_heads \(3\)"),
    (dict(num_experts=4, experts_per_token=5), r"model.experts_per_token \(5\) exceeds model.num_experts \(4\)"),
    (dict(attention_pattern=("local", "global", "global"), sliding_window=8),
     r"model.attention_pattern has 3 entries .* does not divide model.num_layers \(2\)"),
    (dict(attention_pattern=("local",), sliding_window=0), r"local layers but model.sliding_window is 0"),
    (dict(attention_pattern=("local", "sliding")), r"model.attention_pattern must be .* 'global' / 'local'"),
    (dict(num_experts=4, moe_every=3), r"model.moe_every \(3\) does not divide model.num_layers \(2\)"),
    (dict(position_embedding="learned", max_seq_len=32), r"data.seq_len \(64\) exceeds model.max_seq_len \(32\)"),
    (dict(mlp_activation="swish"), r"model.mlp_activation must be one of relu, gelu, relu2, swiglu; got 'swish'"),
    (dict(attention_impl="flash"), r"model.attention_impl must be one of"),
    (dict(attention_impl="dot_product_attention", attention_logit_softcap=30.0), r"has no logit soft-cap"),
    (dict(masked_lm_mask_random_keep=(0.8, 0.1)), r"model.masked_lm_mask_random_keep must be three shares"),
    (dict(remat_policy="some"), r"model.remat_policy must be one of none, full, save_matmuls"),
    (dict(sliding_window=16), r"model.sliding_window is 16 but model.attention_pattern \('global',\) has no 'local'"),
    (dict(norm_eps=0.0), r"model.norm_eps must be positive"),
    (dict(attention_query_chunk=-64), r"model.attention_query_chunk must be >= 0 \(0 = off\), got -64"),
])
def test_inconsistent_model_fields_are_named(overrides, message):
  config = tiny.get_config()
  for key, value in overrides.items():
    config.model[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config, num_devices=8)


def test_an_unknown_host_allocator_is_named():
  config = tiny.get_config()
  config.train.host_allocator = "jemalloc"
  with pytest.raises(config_lib.ConfigError, match=r"train.host_allocator must be one of reuse, system; got 'jemalloc'"):
    config_lib.validate(config, num_devices=8)


def test_an_unknown_cpu_dot_library_is_named():
  config = tiny.get_config()
  config.train.cpu_dot_library = "mkl"
  with pytest.raises(config_lib.ConfigError,
                     match=r"train.cpu_dot_library must be one of onednn, ynnpack; got 'mkl'"):
    config_lib.validate(config, num_devices=8)


def test_experts_must_divide_by_the_expert_axis():
  config = tiny.get_config()
  config.model.num_experts, config.mesh.expert = 6, 4
  config.mesh.data = 2
  with pytest.raises(config_lib.ConfigError, match=r"parameter blocks/layer_0/moe/.* dimension 1 \('expert', size 6\) "
                     r"is not divisible by mesh expert=4"):
    config_lib.validate(config, num_devices=8)


def test_bad_model_shape_fails_at_launch_before_compiling(launch, tmp_path):
  result = launch(tmp_path / "run", "--config.model.num_kv_heads=3")
  assert result.returncode == 2
  assert "model.num_heads (4) must be a multiple of model.num_kv_heads (3)" in result.stderr
  assert "mesh" not in result.stdout  # nothing was built


@pytest.mark.parametrize("stages, message", [
    (((10, 128, 1.0), (10, 256, 1.0)), r"data.context_stages\[1\]: stage steps must increase from 1 on, got 10 after 10"),
    (((10, 64, 1.0),), r"data.context_stages\[0\]: seq_len must increase stage by stage, got 64 after 64"),
    (((10, 128, 0.5),), r"data.context_stages\[0\]: the RoPE scaling factor must be >= 1, got 0.5"),
    (((10, 128, 2.0),), r"data.context_stages\[0\]: a RoPE scaling factor of 2.0 needs a method"),
    (((10, 4096, 1.0),), r"data.context_stages\[0\]: seq_len 4096 exceeds model.max_seq_len \(2048\)"),
    (((10, 1024, 1.0),), r"data.context_stages\[0\]: the 2048 tokens per step .* must make whole rows of 1024, a "
                         r"multiple of the data-parallel size .*; got 2 rows"),
    (((25, 128, 1.0),), r"data.context_stages\[0\]: step 25 is not before train.steps \(20\)"),
    (((10, 128),), r"data.context_stages\[0\]: expected \(step, seq_len, rope_scaling_factor\)"),
])
def test_bad_context_stages_are_named(stages, message):
  config = tiny.get_config()
  config.train.global_batch_size = 32
  config.data.context_stages = stages
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config, num_devices=8)


def test_context_stages_keep_the_tokens_per_step():
  config = tiny.get_config()
  config.train.global_batch_size = 32
  config.model.rope_scaling = "yarn"
  config.data.context_stages = ((5, 128, 2.0), (15, 256, 4.0))
  config_lib.validate(config, num_devices=8)
  stages = config_lib.context_stages(config)
  assert [(s, c.data.seq_len, c.train.global_batch_size, c.model.rope_scaling_factor) for s, c in stages] == [
      (0, 64, 32, 1.0), (5, 128, 16, 2.0), (15, 256, 8, 4.0)]
