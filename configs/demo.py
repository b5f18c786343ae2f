"""The demo: a ~5M-parameter model on the embedded corpus, trained in minutes on a laptop CPU.

    python -m lm.launch --config configs/demo.py
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.vocab_size = 4096
  config.model.d_model = 256
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 64
  config.model.ffn_dim = 768
  config.model.unroll_layers = True  # 4 layers: unrolled compiles in seconds and steps ~8% faster on CPU
  config.data.seq_len = 256
  config.optim.peak_learning_rate = 3e-3
  config.optim.warmup_steps = 30
  config.train.run_dir = "runs/demo"
  config.train.steps = 300
  config.train.global_batch_size = 16
  config.checkpoint.every_steps = 100
  config.eval.every_steps = 100
  config.eval.max_batches = 8
  config.eval.sample_every_steps = 100
  return config
