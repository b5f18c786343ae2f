"""Architecture families of the model zoo: each function sets the fields one published family shares.

A zoo config (`configs/gpt2_124m.py`, `configs/llama2_7b.py`, ...) starts from `configs.base`,
calls one family function with its sizes, then one of `accelerator` / `cpu_sized` for the
run settings. The small CPU versions (`gpt2_tiny`, `llama_tiny`, ...) go through the same
family functions, so tests exercise exactly the options the full-size models use.

Head width is d_model / num_heads in every family (64 for GPT-2, 128 for Llama and Mistral).
"""

from __future__ import annotations

import ml_collections


def gpt2(config: ml_collections.ConfigDict, *, d_model: int, num_layers: int, num_heads: int,
         vocab_size: int = 50257, max_seq_len: int = 1024) -> ml_collections.ConfigDict:
  """GPT-2 (Radford et al. 2019): the original decoder-only recipe.

  Learned absolute positions (a max_seq_len x d_model table), LayerNorm before each block
  and after the last (pre-norm, eps 1e-5), biases in every dense layer and norm, a GELU
  MLP 4 x d_model wide, multi-head attention, and the output projection tied to the token
  embedding. Init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers).
  """
  m = config.model
  m.vocab_size = vocab_size
  m.d_model = d_model
  m.num_layers = num_layers
  m.num_heads = num_heads
  m.num_kv_heads = num_heads
  m.head_dim = d_model // num_heads
  m.ffn_dim = 4 * d_model
  m.mlp_activation = "gelu"
  m.use_bias = True
  m.position_embedding = "learned"
  m.max_seq_len = max_seq_len
  m.norm_type = "layernorm"
  m.norm_position = "pre"
  m.norm_eps = 1e-5
  m.attention_pattern = ("global",)
  m.sliding_window = 0
  m.num_experts = 0
  m.tie_embeddings = True
  m.init_scheme = "scaled_output"
  m.init_std = 0.02
  return config


def llama(config: ml_collections.ConfigDict, *, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
          ffn_dim: int, vocab_size: int, max_seq_len: int, rope_theta: float) -> ml_collections.ConfigDict:
  """Llama (Touvron et al. 2023; Llama 2; Llama 3): the modern dense recipe.

  RoPE positions with base `rope_theta`, RMSNorm before each block and after the last
  (eps 1e-5), a SwiGLU MLP (gate, up and down matrices, `ffn_dim` wide), no biases,
  grouped-query attention when num_kv_heads < num_heads, and a separate (untied) output
  matrix. Init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers).
  """
  m = config.model
  m.vocab_size = vocab_size
  m.d_model = d_model
  m.num_layers = num_layers
  m.num_heads = num_heads
  m.num_kv_heads = num_kv_heads
  m.head_dim = d_model // num_heads
  m.ffn_dim = ffn_dim
  m.mlp_activation = "swiglu"
  m.use_bias = False
  m.position_embedding = "rope"
  m.max_seq_len = max_seq_len
  m.rope_theta = rope_theta
  m.norm_type = "rmsnorm"
  m.norm_position = "pre"
  m.norm_eps = 1e-5
  m.attention_pattern = ("global",)
  m.sliding_window = 0
  m.num_experts = 0
  m.tie_embeddings = False
  m.init_scheme = "scaled_output"
  m.init_std = 0.02
  return config


def mistral(config: ml_collections.ConfigDict, *, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
            ffn_dim: int, sliding_window: int, vocab_size: int = 32000, max_seq_len: int = 8192,
            rope_theta: float = 10000.0) -> ml_collections.ConfigDict:
  """Mistral 7B v0.1 (Jiang et al. 2023): the Llama recipe with sliding-window attention on every layer.

  Every layer is 'local': a query sees the `sliding_window` most recent tokens (itself
  included), so with a context longer than the window information travels further only
  through depth. Otherwise as `llama` (grouped-query attention, SwiGLU, RMSNorm, untied).
  """
  llama(config, d_model=d_model, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
        ffn_dim=ffn_dim, vocab_size=vocab_size, max_seq_len=max_seq_len, rope_theta=rope_theta)
  config.model.attention_pattern = ("local",)
  config.model.sliding_window = sliding_window
  return config


def mixtral(config: ml_collections.ConfigDict, *, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
            ffn_dim: int, num_experts: int, experts_per_token: int, vocab_size: int = 32000,
            max_seq_len: int = 32768, rope_theta: float = 1e6) -> ml_collections.ConfigDict:
  """Mixtral (Jiang et al. 2024): the Mistral body with a sparse MoE MLP on every layer and global attention.

  Each layer's MLP is `num_experts` SwiGLU experts (`ffn_dim` wide each) behind a linear
  router; a token goes to its top `experts_per_token` experts, whose outputs are summed with
  the renormalised router probabilities. No sliding window; RoPE base 1e6 for long context.
  """
  llama(config, d_model=d_model, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
        ffn_dim=ffn_dim, vocab_size=vocab_size, max_seq_len=max_seq_len, rope_theta=rope_theta)
  m = config.model
  m.num_experts = num_experts
  m.experts_per_token = experts_per_token
  m.moe_every = 1
  return config


def accelerator(config: ml_collections.ConfigDict, *, name: str, seq_len: int, global_batch_size: int, steps: int,
                warmup_steps: int, peak_learning_rate: float, fsdp: int, expert: int = 1, tensor: int = 1,
                remat_policy: str = "full") -> ml_collections.ConfigDict:
  """Run settings of a full-size model on accelerators.

  bfloat16 matmuls and activations over float32 master weights; parameters and optimizer
  state sharded over `fsdp` devices (times `expert` and `tensor` where given), with the
  data axis taking whatever devices are left (mesh.data = -1). Training rows are the
  model's full context. The optimizer follows the base AdamW (b2 0.95, weight decay 0.1,
  clipping 1.0). data.tokens_dir is left to the command line: the embedded corpus is far
  too small for these models.
  """
  m = config.model
  m.param_dtype = "float32"
  m.compute_dtype = "bfloat16"
  m.remat_policy = remat_policy
  config.data.seq_len = seq_len
  config.mesh.data = -1
  config.mesh.fsdp = fsdp
  config.mesh.expert = expert
  config.mesh.tensor = tensor
  config.optim.peak_learning_rate = peak_learning_rate
  config.optim.warmup_steps = warmup_steps
  config.train.run_dir = f"runs/{name}"
  config.train.steps = steps
  config.train.global_batch_size = global_batch_size
  config.checkpoint.every_steps = 1000
  config.eval.every_steps = 1000
  return config


def cpu_sized(config: ml_collections.ConfigDict, *, name: str) -> ml_collections.ConfigDict:
  """Run settings of the CPU-sized family members: seconds-long runs on the embedded corpus, in float32."""
  config.model.param_dtype = "float32"
  config.model.compute_dtype = "float32"
  config.data.seq_len = 64
  config.data.tokenizer_max_sentences = 50000
  config.optim.peak_learning_rate = 3e-3
  config.optim.warmup_steps = 5
  config.train.run_dir = f"runs/{name}"
  config.train.steps = 20
  config.train.global_batch_size = 8
  config.checkpoint.every_steps = 10
  config.eval.every_steps = 10
  config.eval.max_batches = 2
  config.eval.sample_tokens = 16
  config.log.every_steps = 5
  return config
