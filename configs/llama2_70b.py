"""Llama 2 70B (68.98B parameters), grouped-query attention with 8 key/value heads; 4M-token batches.

Sized for 256 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/llama2_70b.py --num_devices 256

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 256


def get_config():
  config = base.get_config()
  families.llama(config, d_model=8192, num_layers=80, num_heads=64, num_kv_heads=8, ffn_dim=28672, vocab_size=32000,
                 max_seq_len=4096, rope_theta=1e4)
  families.accelerator(config, name="llama2_70b", seq_len=4096, global_batch_size=1024,
                       steps=500000, warmup_steps=2000, peak_learning_rate=1.5e-4, fsdp=64)
  return config
