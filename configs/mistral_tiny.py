"""The Mistral recipe at CPU size: the Llama recipe with a 16-token sliding window on every layer.

    python -m lm.launch --config configs/mistral_tiny.py
"""

from configs import base
from configs import families


def get_config():
  config = base.get_config()
  families.mistral(config, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128, sliding_window=16,
                   vocab_size=512, max_seq_len=64)
  families.cpu_sized(config, name="mistral_tiny")
  return config
