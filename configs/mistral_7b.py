"""Mistral 7B v0.1 (7.24B parameters): a 4096-token sliding window on every layer, 8192-token context.

Sized for 128 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/mistral_7b.py --num_devices 128

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 128


def get_config():
  config = base.get_config()
  families.mistral(config, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_dim=14336,
                   sliding_window=4096, vocab_size=32000, max_seq_len=8192, rope_theta=1e4)
  families.accelerator(config, name="mistral_7b", seq_len=8192, global_batch_size=512,
                       steps=500000, warmup_steps=2000, peak_learning_rate=3e-4, fsdp=8)
  return config
