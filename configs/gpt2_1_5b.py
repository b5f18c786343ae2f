"""GPT-2 XL (1.56B parameters).

Sized for 32 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/gpt2_1_5b.py --num_devices 32

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 32


def get_config():
  config = base.get_config()
  families.gpt2(config, d_model=1600, num_layers=48, num_heads=25)
  families.accelerator(config, name="gpt2_1_5b", seq_len=1024, global_batch_size=512,
                       steps=20000, warmup_steps=700, peak_learning_rate=2e-4, fsdp=8, remat_policy="save_matmuls")
  return config
