"""A seconds-long smoke run: a ~0.2M-parameter model on the embedded corpus.

    python -m lm.launch --config configs/tiny.py
"""

from configs import base
from configs import families


def get_config():
  config = base.get_config()
  config.model.vocab_size = 512
  config.model.d_model = 64
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 16
  config.model.ffn_dim = 128
  families.cpu_sized(config, name="tiny")
  return config
