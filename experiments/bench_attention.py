"""Attention implementations side by side: time and memory of forward + backward by sequence length.

    python -m experiments.bench_attention [--seq_lens 512,1024,2048,4096,8192] [--block_size 512]

For each length it compiles the gradient of sum(attention(q, k, v) * cotangent) for every
implementation of `lm.attention` (causal, one row, `--num_heads` query heads over
`--num_kv_heads` key/value heads of `--head_dim`, float32 on CPU, `--dtype` elsewhere) and
prints the median wall time of 5 runs after a warm-up and XLA's temporary-buffer bytes of
the compiled program (`memory_analysis().temp_size_in_bytes`). This is the measurement
behind `model.blockwise_min_seq_len`, the length from which `attention_impl = "auto"`
switches to blockwise attention.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import base
from lm import attention

FLAGS = flags.FLAGS
flags.DEFINE_list("seq_lens", ["512", "1024", "2048", "4096", "8192"], "sequence lengths to measure")
flags.DEFINE_integer("num_heads", 8, "query heads")
flags.DEFINE_integer("num_kv_heads", 2, "key/value heads")
flags.DEFINE_integer("head_dim", 64, "width of one head")
flags.DEFINE_integer("block_size", 512, "query/key block of the blockwise implementation")
flags.DEFINE_string("dtype", "", "compute dtype; '' = float32 on CPU, bfloat16 elsewhere")
flags.DEFINE_integer("repeats", 5, "timed runs per cell (the median is printed)")


def _model_config(impl: str, block_size: int) -> ml_collections.FrozenConfigDict:
  cfg = base.get_config().model
  cfg.attention_impl = impl
  cfg.attention_block_size = block_size
  cfg.num_heads, cfg.num_kv_heads, cfg.head_dim = FLAGS.num_heads, FLAGS.num_kv_heads, FLAGS.head_dim
  return ml_collections.FrozenConfigDict(cfg)


def measure(impl: str, seq_len: int, dtype) -> tuple[float, int]:
  """(median seconds of one forward + backward, temporary bytes of the compiled program)."""
  cfg = _model_config(impl, FLAGS.block_size)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (1, seq_len, cfg.num_heads, cfg.head_dim), dtype)
  k = jax.random.normal(keys[1], (1, seq_len, cfg.num_kv_heads, cfg.head_dim), dtype)
  v = jax.random.normal(keys[2], (1, seq_len, cfg.num_kv_heads, cfg.head_dim), dtype)
  cotangent = jax.random.normal(keys[3], q.shape, dtype)
  index = jnp.arange(seq_len, dtype=jnp.int32)[None]
  segment = jnp.ones((1, seq_len), jnp.int32)

  def loss(q, k, v):
    out = attention.attend(cfg, q, k, v, index, index, segment, segment, window=0)
    return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  compiled = step.lower(q, k, v).compile()
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(q, k, v))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), temp_bytes


def main(argv):
  del argv
  backend = jax.default_backend()
  dtype = jnp.dtype(FLAGS.dtype or ("float32" if backend == "cpu" else "bfloat16"))
  impls = ["xla", "dot_product_attention", "blockwise"]
  print(f"causal attention forward + backward on {jax.devices()[0].device_kind} ({backend}), {dtype.name}, "
        f"1 row, {FLAGS.num_heads} heads / {FLAGS.num_kv_heads} kv heads x {FLAGS.head_dim}, "
        f"blockwise block {FLAGS.block_size}; median of {FLAGS.repeats}")
  header = f"{'seq_len':>8}" + "".join(f"{impl + ' ms':>28}{'temp MB':>10}" for impl in impls) + f"{'fastest':>24}"
  print(header)
  for seq_len in (int(s) for s in FLAGS.seq_lens):
    row = f"{seq_len:>8}"
    results = {}
    for impl in impls:
      try:
        seconds, temp = measure(impl, seq_len, dtype)
        results[impl] = seconds
        row += f"{1000 * seconds:>28.1f}{temp / 2**20:>10.1f}"
      except Exception as e:  # pylint: disable=broad-except
        row += f"{'failed: ' + type(e).__name__:>28}{'':>10}"
    print(row + f"{min(results, key=results.get) if results else '-':>24}", flush=True)


if __name__ == "__main__":
  app.run(main)
