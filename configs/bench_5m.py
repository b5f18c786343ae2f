"""The 5M-parameter benchmark model: `bench_29m` at d_model 256, 4 layers, 4 heads.

    python -m experiments.bench_train --configs bench_5m

Everything else as `bench_29m`: GELU MLP (4x), biases and LayerNorm, learned positions, tied
embeddings, vocabulary 8192, rows of 256 tokens, 16 rows a step.
"""

from configs import bench_29m


def get_config():
  config = bench_29m.get_config()
  config.model.d_model = 256
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 4
  config.model.ffn_dim = 1024
  config.train.run_dir = "runs/bench_5m"
  return config
