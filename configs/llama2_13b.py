"""Llama 2 13B (13.0B parameters), 4096-token context; 4M-token batches (2T tokens in 500K steps).

Sized for 128 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/llama2_13b.py --num_devices 128

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 128


def get_config():
  config = base.get_config()
  families.llama(config, d_model=5120, num_layers=40, num_heads=40, num_kv_heads=40, ffn_dim=13824, vocab_size=32000,
                 max_seq_len=4096, rope_theta=1e4)
  families.accelerator(config, name="llama2_13b", seq_len=4096, global_batch_size=1024,
                       steps=500000, warmup_steps=2000, peak_learning_rate=3e-4, fsdp=16)
  return config
