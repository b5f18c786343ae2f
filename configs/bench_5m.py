"""The 5M-parameter benchmark model: `bench_29m` at d_model 256, 4 layers, 4 heads.

    python -m experiments.bench_train --configs bench_5m

Everything else as `bench_29m`: GELU MLP (4x), biases and LayerNorm, learned positions, tied
embeddings, vocabulary 8192, rows of 256 tokens, 16 rows a step.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.vocab_size = 8192
  config.model.d_model = 256
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 4
  config.model.head_dim = 64
  config.model.ffn_dim = 1024
  config.model.mlp_activation = "gelu"
  config.model.use_bias = True
  config.model.norm_type = "layernorm"
  config.model.norm_eps = 1e-5
  config.model.position_embedding = "learned"
  config.model.max_seq_len = 256
  # The two optimisations the benchmark's profile called for (README, "Performance"): no per-layer
  # slicing and stacking of the scan over depth, and causal attention that skips the hidden half.
  config.model.unroll_layers = True
  config.model.attention_query_chunk = 64
  config.data.seq_len = 256
  config.train.global_batch_size = 16
  config.train.run_dir = "runs/bench_5m"
  return config
