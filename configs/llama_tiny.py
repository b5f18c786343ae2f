"""The Llama recipe at CPU size: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied output.

    python -m lm.launch --config configs/llama_tiny.py
"""

from configs import base
from configs import families


def get_config():
  config = base.get_config()
  families.llama(config, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128, vocab_size=512,
                 max_seq_len=64, rope_theta=1e4)
  families.cpu_sized(config, name="llama_tiny")
  return config
