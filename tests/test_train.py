import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from data import loader
from data import tokenizer as tokenizer_lib
from lm import config as config_lib
from lm import objectives
from lm import sharding
from lm import train


def test_loss_falls_over_50_steps(tiny_config, train_iterator):
  config = tiny_config
  config.train.steps = 50
  config.mesh.fsdp = 2
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  losses, norms = [], []
  for _ in range(50):
    state, metrics = trainer.train_step(state, sharding.global_batch(next(it), trainer.batch_sharding))
    losses.append(float(metrics["train/loss"]))
    norms.append(float(metrics["train/grad_norm"]))
  assert int(state.step) == 50
  assert np.all(np.isfinite(losses)) and np.all(np.isfinite(norms))
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert first > 5.5  # about log(512) at init
  assert last < first - 1.0, (first, last)


def test_eval_step_counts_only_masked_tokens(tiny_config, tokens):
  config = tiny_config
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state(jax.random.PRNGKey(0))
  rows = loader.evaluation_rows(tokens.splits["code"]["validation"], seq_len=64, pad_id=3, max_rows=12)
  batch = next(loader.evaluation_batches(rows, batch_size=8))
  total, count = trainer.eval_step(state.params, sharding.global_batch(batch, trainer.batch_sharding))
  assert float(count) == batch["loss_mask"].sum()
  empty = {k: np.zeros_like(v) for k, v in batch.items()}
  total, count = trainer.eval_step(state.params, sharding.global_batch(empty, trainer.batch_sharding))
  assert float(total) == 0.0 and float(count) == 0.0


def test_bfloat16_compute_keeps_float32_master_weights_and_optimizer_state(tiny_config, train_iterator):
  config = tiny_config
  config.model.compute_dtype = "bfloat16"
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batch = sharding.global_batch(next(it), trainer.batch_sharding)
  logits, _ = trainer.model.apply({"params": state.params}, batch["inputs"], batch["segment_ids"],
                                  batch["positions"])
  assert logits.dtype == np.float32  # loss and softmax in float32
  for _ in range(3):
    state, metrics = trainer.train_step(state, batch)
  assert np.isfinite(float(metrics["train/loss"]))
  for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  # The matmuls really ran in bfloat16: the jaxpr of the forward pass has bfloat16 dot products.
  jaxpr = jax.make_jaxpr(lambda p: trainer.model.apply({"params": p}, batch["inputs"], batch["segment_ids"],
                                                       batch["positions"]))(state.params)
  assert "bf16[" in str(jaxpr) and "dot_general" in str(jaxpr)


def test_optimizer_moments_stored_in_bfloat16_are_updated_in_float32(tiny_config, train_iterator):
  losses, states = {}, {}
  for state_dtype in ("float32", "bfloat16"):
    config = tiny_config
    config.optim.state_dtype = state_dtype
    trainer = train.build(config, sharding.make_mesh(config.mesh))
    it = train_iterator(config)
    state = trainer.init_state(jax.random.PRNGKey(0))
    for _ in range(4):
      state, metrics = trainer.train_step(state, sharding.global_batch(next(it), trainer.batch_sharding))
    losses[state_dtype], states[state_dtype] = float(metrics["train/loss"]), jax.device_get(state)
  adam = states["bfloat16"].opt_state[1]
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves((adam.mu, adam.nu))} == {np.dtype("bfloat16")}
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(states["bfloat16"].params)} == {np.dtype("float32")}
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=1e-3)
  query = ("blocks", "layer_0", "attention", "query")
  a, b = (states[k].params[query[0]][query[1]][query[2]][query[3]] for k in ("float32", "bfloat16"))
  assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()


def test_auto_compute_dtype_is_float32_on_cpu_and_bfloat16_on_accelerators():
  config = tiny.get_config()
  config.model.compute_dtype = "auto"
  assert config_lib.for_platform(config, "cpu").model.compute_dtype == "float32"
  assert config_lib.for_platform(config, "gpu").model.compute_dtype == "bfloat16"
  assert config_lib.for_platform(config, "tpu").model.compute_dtype == "bfloat16"
  assert config.model.compute_dtype == "auto"  # the caller's config is left as it was


# Together these cover every value of every architecture option (each alone is tested in test_model.py).
OPTION_SETS = {
    "gpt2_like": dict(position_embedding="learned", max_seq_len=64, norm_type="layernorm", use_bias=True,
                      mlp_activation="gelu", num_kv_heads=4, attention_impl="xla", init_scheme="normal"),
    "alibi_mqa_local_blockwise": dict(position_embedding="alibi", mlp_activation="relu", num_kv_heads=1,
                                      attention_pattern=("local", "global"), sliding_window=16,
                                      attention_impl="blockwise", attention_block_size=16, remat_policy="full"),
    "nope_post_norm_qk_softcap": dict(position_embedding="none", norm_position="post", mlp_activation="relu2",
                                      qk_norm=True, attention_logit_softcap=20.0, remat_policy="save_matmuls",
                                      init_scheme="fan_in"),
    "moe_zloss_jax_nn": dict(num_experts=4, experts_per_token=2, moe_every=2, capacity_factor=1.0,
                             logits_z_loss_weight=1e-4, attention_impl="dot_product_attention",
                             tie_embeddings=False),
    "masked_lm": dict(objective="masked", rope_theta=500000.0),
}


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_every_option_trains_20_steps_without_nan(tiny_config, train_iterator, name):
  config = tiny_config
  for key, value in OPTION_SETS[name].items():
    config.model[key] = value
  config_lib.validate(config, jax.device_count())
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  history = []
  for _ in range(20):
    state, metrics = trainer.train_step(state, sharding.global_batch(next(it), trainer.batch_sharding))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  losses = [m["train/loss"] for m in history]
  assert np.all(np.isfinite(losses)) and all(np.isfinite(m["train/grad_norm"]) for m in history)
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
  if name == "moe_zloss_jax_nn":
    assert all(0.0 <= m["train/moe_dropped_fraction"] < 1.0 for m in history)
    assert sum(m["train/moe_dropped_tokens"] for m in history) > 0  # capacity factor 1: some overflow
    assert all(m["train/moe_load_balance_loss"] >= 0.99 for m in history)  # >= 1, equality when uniform
    assert all(m["train/total_loss"] > m["train/loss"] for m in history)  # the auxiliary losses are added


def test_masked_lm_batch_selects_and_corrupts_as_configured():
  config = tiny.get_config().model
  config.vocab_size = 1000
  tokens = jax.random.randint(jax.random.PRNGKey(0), (64, 256), 5, 1000)
  segment_ids = jnp.ones((64, 256), jnp.int32).at[:, 200:].set(0)  # a padded tail
  batch = {"inputs": tokens, "targets": jnp.zeros_like(tokens), "segment_ids": segment_ids,
           "positions": jnp.zeros_like(tokens), "loss_mask": jnp.zeros_like(tokens)}
  out = objectives.masked_lm_batch(batch, config, jax.random.PRNGKey(1))
  selected = np.asarray(out["loss_mask"]).astype(bool)
  inputs, original = np.asarray(out["inputs"]), np.asarray(tokens)
  assert not selected[:, 200:].any()  # padding is never a target
  assert abs(selected[:, :200].mean() - 0.15) < 0.01
  np.testing.assert_array_equal(np.asarray(out["targets"]), original)
  np.testing.assert_array_equal(inputs[~selected], original[~selected])  # unselected tokens stay
  masked = inputs[selected] == tokenizer_lib.MASK_ID
  kept = inputs[selected] == original[selected]
  randomised = ~masked & ~kept
  assert abs(masked.mean() - 0.8) < 0.02 and abs(randomised.mean() - 0.1) < 0.02 and abs(kept.mean() - 0.1) < 0.02


def test_masked_lm_scores_only_selected_positions_with_bidirectional_attention(tiny_config, train_iterator):
  config = tiny_config
  config.model.objective = "masked"
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state(jax.random.PRNGKey(0))
  host = next(train_iterator(config))
  total, count = trainer.eval_step(state.params, sharding.global_batch(host, trainer.batch_sharding))
  rng = jax.random.fold_in(jax.random.PRNGKey(config.eval.masked_lm_seed), int(host["inputs"].sum()))
  prepared = objectives.prepare_batch({k: jnp.asarray(v) for k, v in host.items()}, config.model, rng)
  selected = np.asarray(prepared["loss_mask"]).astype(bool)
  assert float(count) == selected.sum() and 0.1 < selected.sum() / (host["segment_ids"] > 0).sum() < 0.2
  # The loss is the cross-entropy at selected positions only, of the original tokens.
  logits, _ = trainer.model.apply({"params": state.params}, prepared["inputs"], prepared["segment_ids"],
                                  prepared["positions"])
  log_probs = jax.nn.log_softmax(logits)
  picked = np.take_along_axis(np.asarray(log_probs), np.asarray(host["inputs"])[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(float(total), -picked[selected].sum(), rtol=1e-4)
  # Bidirectional: the first token's logits change when a later token of its document changes.
  inputs = prepared["inputs"]
  changed = inputs.at[0, 1].set((inputs[0, 1] + 1) % config.model.vocab_size)
  a, _ = trainer.model.apply({"params": state.params}, inputs, prepared["segment_ids"], prepared["positions"])
  b, _ = trainer.model.apply({"params": state.params}, changed, prepared["segment_ids"], prepared["positions"])
  assert not np.allclose(np.asarray(a[0, 0]), np.asarray(b[0, 0]))


def test_logits_z_loss_is_added_with_its_weight(tiny_config, train_iterator):
  config = tiny_config
  config.model.logits_z_loss_weight = 0.5
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state(jax.random.PRNGKey(0))
  _, metrics = trainer.train_step(state, sharding.global_batch(next(train_iterator(config)), trainer.batch_sharding))
  np.testing.assert_allclose(float(metrics["train/total_loss"]),
                             float(metrics["train/loss"]) + 0.5 * float(metrics["train/logits_z_loss"]), rtol=1e-5)


def test_moe_run_reports_dropped_tokens_in_the_metrics_stream(tiny_config, capsys):
  config = tiny_config
  config.model.num_experts, config.model.experts_per_token, config.model.capacity_factor = 4, 2, 0.5
  config.train.steps, config.log.every_steps, config.eval.every_steps, config.eval.sample_tokens = 6, 3, 6, 2
  train.run(config)
  with open(f"{config.train.run_dir}/metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  logged = [r for r in records if "train/moe_dropped_tokens" in r]
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
  assert all(r["train/moe_dropped_tokens"] > 0 and 0 < r["train/moe_dropped_fraction"] < 1 for r in logged)
  assert "moe: dropped" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["gpt2_tiny", "llama_tiny", "mistral_tiny", "mixtral_tiny"])
def test_cpu_sized_zoo_configs_train(name, train_iterator):
  config = importlib.import_module(f"configs.{name}").get_config()
  config_lib.validate(config, jax.device_count())
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  it = train_iterator(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  losses = []
  for _ in range(config.train.steps):
    state, metrics = trainer.train_step(state, sharding.global_batch(next(it), trainer.batch_sharding))
    losses.append(float(metrics["train/loss"]))
  assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


@pytest.mark.parametrize("num_experts", [0, 4])
def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tiny_config, train_iterator, num_experts):
  """4 microbatches of 8 rows vs one step on the 32 rows: same loss and parameters (relative 1e-5, float32)."""
  config = tiny_config
  config.train.global_batch_size = 32
  config.mesh.fsdp = 2
  config.model.num_experts, config.model.moe_every = num_experts, 2
  host_batch = next(train_iterator(config))
  results = {}
  for microbatches in (1, 4):
    config.train.microbatches = microbatches
    trainer = train.build(config, sharding.make_mesh(config.mesh))
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.train_step(state, sharding.global_batch(host_batch, trainer.batch_sharding))
    results[microbatches] = jax.device_get((metrics, state.params))
  (whole, whole_params), (accumulated, accumulated_params) = results[1], results[4]
  keys = ["train/loss", "train/total_loss", "train/grad_norm", "train/target_tokens"]
  if num_experts:
    keys += ["train/moe_dropped_tokens"]
  # Router logits of near-tied experts can round differently when the matmul sees 8 rather than 32 rows.
  tolerance = 1e-4 if num_experts else 1e-5
  for key in keys:
    assert accumulated[key] == pytest.approx(whole[key], rel=tolerance), key
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(accumulated_params),
                          jax.tree_util.tree_leaves(whole_params), strict=True):
    relative = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert relative <= tolerance, (jax.tree_util.keystr(path), relative)


def test_a_completed_run_records_n_d_and_c_in_run_json_result_json_and_the_metrics(trained_run):
  from lm import params as params_lib  # pylint: disable=import-outside-toplevel
  from lm import run_dir as run_dir_lib  # pylint: disable=import-outside-toplevel
  config = run_dir_lib.load_config(trained_run)
  counts = params_lib.count_parameters(config.model)
  tokens = config.train.steps * config.train.global_batch_size * config.data.seq_len
  per_token = params_lib.flops_per_token(config.model, config.data.seq_len)["total"]
  with open(f"{trained_run}/run.json") as f:
    compute = json.load(f)["compute"]
  assert compute["params_total"] == counts["total"] and compute["params_non_embedding"] == counts["non_embedding"]
  assert compute["tokens"] == tokens
  assert compute["compute_6nd"] == 6 * counts["total"] * tokens
  assert compute["compute_6nd_non_embedding"] == 6 * counts["non_embedding"] * tokens
  assert compute["compute"] == pytest.approx(per_token * tokens) and compute["compute"] > compute["compute_6nd"]
  result = run_dir_lib.read_result(trained_run)
  assert result["step"] == config.train.steps and result["compute"] == compute
  with open(f"{trained_run}/metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  last = [r for r in rows if "compute/flops" in r][-1]
  assert last["step"] == config.train.steps and last["compute/tokens"] == tokens
  assert last["compute/flops_6nd"] == pytest.approx(compute["compute_6nd"])
  assert last["compute/flops"] == pytest.approx(compute["compute"])
  # The params report states the same run totals.
  report = params_lib.report(config, {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1})
  assert f"{compute['compute_6nd']:.3e}" in report and f"{tokens:,.0f}" in report


def test_context_stages_in_one_run_resume_inside_a_stage(tokens_dir, tmp_path):
  """Steps 0-2 at 64 ids x 16 rows, then 128 x 8 with RoPE x2; a resume inside the second stage ends the same."""
  import shutil  # pylint: disable=import-outside-toplevel

  def config_for(name):
    config = tiny.get_config()
    config.train.run_dir, config.data.tokens_dir = str(tmp_path / name), tokens_dir
    config.train.steps, config.train.global_batch_size = 6, 16
    config.model.rope_scaling = "linear"
    config.data.context_stages = ((3, 128, 2.0),)
    config.checkpoint.every_steps, config.eval.every_steps, config.eval.sample_every_steps = 4, 6, 100
    config.log.noise_scale_every_steps = 0
    return config

  whole = train.run(config_for("whole"))
  with open(tmp_path / "whole" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  stage = [r for r in records if r.get("event") == "context_stage"]
  assert [(r["step"], r["seq_len"], r["rows"], r["rope_scaling_factor"]) for r in stage] == [(3, 128, 8, 2.0)]
  tokens = {r["step"]: r["train/target_tokens"] for r in records if "train/target_tokens" in r}
  assert all(900 < tokens[s] <= 1024 for s in range(1, 7))  # 16 x 64 and 8 x 128 rows: the same tokens per step
  flops = {r["step"]: r["compute/flops"] for r in records if "compute/flops" in r}
  assert flops[6] - flops[5] > flops[3] - flops[2]  # longer rows cost more attention per token
  with open(tmp_path / "whole" / "run.json") as f:
    compute = json.load(f)["compute"]
  with open(tmp_path / "whole" / "result.json") as f:
    assert json.load(f)["compute"] == compute
  assert compute["compute"] == pytest.approx(flops[6])  # the full count takes each stage at its own row length

  shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")  # as if stopped after the save at step 4
  resumed = train.run(config_for("resumed"))
  assert resumed["resumed_from"] == 4 and resumed["val_loss"] == whole["val_loss"]
