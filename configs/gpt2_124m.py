"""GPT-2 small (124M parameters, 124,439,808 counted).

Sized for 8 devices (NUM_DEVICES; mesh.data takes the devices fsdp, expert and tensor leave).
Per-device parameter, FLOP and memory figures:

    python -m lm.params --config configs/gpt2_124m.py --num_devices 8

Training needs a corpus: --config.data.path=/path/to/corpus.
"""

from configs import base
from configs import families

NUM_DEVICES = 8


def get_config():
  config = base.get_config()
  families.gpt2(config, d_model=768, num_layers=12, num_heads=12)
  families.accelerator(config, name="gpt2_124m", seq_len=1024, global_batch_size=512,
                       steps=20000, warmup_steps=700, peak_learning_rate=6e-4, fsdp=8, remat_policy="save_matmuls")
  return config
