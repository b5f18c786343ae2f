"""Llama 3 8B (8.03B parameters): 128K vocabulary, 8192-token context, RoPE base 500000; 4M-token batches.

Sized for 256 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/llama3_8b.py --num_devices 256

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 256


def get_config():
  config = base.get_config()
  families.llama(config, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_dim=14336, vocab_size=128256,
                 max_seq_len=8192, rope_theta=5e5)
  families.accelerator(config, name="llama3_8b", seq_len=8192, global_batch_size=512,
                       steps=3_600_000, warmup_steps=2000, peak_learning_rate=3e-4, fsdp=8)
  return config
