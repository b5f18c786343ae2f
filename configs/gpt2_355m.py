"""GPT-2 medium (355M parameters).

Sized for 16 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/gpt2_355m.py --num_devices 16

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 16


def get_config():
  config = base.get_config()
  families.gpt2(config, d_model=1024, num_layers=24, num_heads=16)
  families.accelerator(config, name="gpt2_355m", seq_len=1024, global_batch_size=512,
                       steps=20000, warmup_steps=700, peak_learning_rate=3e-4, fsdp=8, remat_policy="save_matmuls")
  return config
