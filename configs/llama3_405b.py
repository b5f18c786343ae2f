"""Llama 3.1 405B (406B parameters): 126 layers, 128 query / 8 key-value heads; 16M-token batches.

Sized for 16,384 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/llama3_405b.py --num_devices 16384

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 16384


def get_config():
  config = base.get_config()
  families.llama(config, d_model=16384, num_layers=126, num_heads=128, num_kv_heads=8, ffn_dim=53248,
                 vocab_size=128256, max_seq_len=8192, rope_theta=5e5)
  families.accelerator(config, name="llama3_405b", seq_len=8192, global_batch_size=2048,
                       steps=1_000_000, warmup_steps=8000, peak_learning_rate=8e-5, fsdp=128, tensor=8)
  return config
