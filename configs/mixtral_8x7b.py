"""Mixtral 8x7B (46.7B parameters, 12.9B active per token): 8 SwiGLU experts, top-2, on every layer.

Sized for 128 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/mixtral_8x7b.py --num_devices 128

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 128


def get_config():
  config = base.get_config()
  families.mixtral(config, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_dim=14336, num_experts=8,
                   experts_per_token=2, vocab_size=32000, max_seq_len=32768, rope_theta=1e6)
  families.accelerator(config, name="mixtral_8x7b", seq_len=32768, global_batch_size=128,
                       steps=500000, warmup_steps=2000, peak_learning_rate=3e-4, fsdp=8, expert=8)
  return config
