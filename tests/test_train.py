import jax
import numpy as np

from data import loader
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


def test_eval_step_counts_only_masked_tokens(tiny_config, examples):
  config = tiny_config
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state(jax.random.PRNGKey(0))
  rows = loader.evaluation_rows(examples[:20], seq_len=64, num_packing_bins=8, pad_id=3)
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
