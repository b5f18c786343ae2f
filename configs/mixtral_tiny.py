"""The Mixtral recipe at CPU size: 4 SwiGLU experts, top-2, on every layer.

    python -m lm.launch --config configs/mixtral_tiny.py
"""

from configs import base
from configs import families


def get_config():
  config = base.get_config()
  families.mixtral(config, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128, num_experts=4,
                   experts_per_token=2, vocab_size=512, max_seq_len=64)
  families.cpu_sized(config, name="mixtral_tiny")
  return config
