"""The GPT-2 recipe at CPU size: learned positions, LayerNorm, GELU, biases, tied embeddings.

    python -m lm.launch --config configs/gpt2_tiny.py
"""

from configs import base
from configs import families


def get_config():
  config = base.get_config()
  families.gpt2(config, d_model=64, num_layers=2, num_heads=4, vocab_size=512, max_seq_len=64)
  families.cpu_sized(config, name="gpt2_tiny")
  return config
