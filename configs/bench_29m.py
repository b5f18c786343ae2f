"""The 29M-parameter benchmark model: nanoGPT's shape at d_model 512, 8 layers, 8 heads.

    python -m experiments.bench_train --configs bench_29m

GELU MLP (4x), biases and LayerNorm, learned positions, tied embeddings, vocabulary 8192,
rows of 256 tokens, 16 rows a step: the model `experiments/torch_reference.py` builds in
PyTorch, so that both step times measure the same FLOPs.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.vocab_size = 8192
  config.model.d_model = 512
  config.model.num_layers = 8
  config.model.num_heads = 8
  config.model.num_kv_heads = 8
  config.model.head_dim = 64
  config.model.ffn_dim = 2048
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
  config.train.run_dir = "runs/bench_29m"
  return config
