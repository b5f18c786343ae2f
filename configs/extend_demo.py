"""Context extension: the code-only demo model (configs/demo_code.py, trained on rows of 256) continued on
rows of 1024 with YaRN-scaled RoPE.

    python -m lm.launch --config configs/demo_code.py
    python -m lm.launch --config configs/extend_demo.py
    python -m lm.evaluate --run runs/extend_demo --task position_loss --data runs/demo_code/tokens --seq_len 1024

Tokens per step stay those of the base (4 rows of 1024 = 16 of 256). At 1024 ids the 'auto'
attention takes the blockwise (memory-efficient) kernel, which never builds the seq x seq matrix.
The same schedule inside one run is data.context_stages, e.g. ((200, 1024, 4.0),) on top of
configs/demo_code.py.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.train.init_from = "runs/demo_code"
  config.train.init_learning_rate_fraction = 0.2
  config.data.tokens_dir = "runs/demo_code/tokens"
  config.data.mixture = (("code", 1.0), ("docs", 0.0))  # the base's data, now in rows of 1024
  config.data.seq_len = 1024
  config.train.global_batch_size = 4
  config.model.rope_scaling = "yarn"
  config.model.rope_scaling_factor = 4.0
  config.model.rope_original_max_seq_len = 256
  config.optim.warmup_steps = 10
  config.train.steps = 100
  config.train.run_dir = "runs/extend_demo"
  config.eval.at_start = True
  config.eval.every_steps = 25
  config.eval.max_batches = 8
  config.checkpoint.every_steps = 100
  config.eval.sample_every_steps = 100
  return config
