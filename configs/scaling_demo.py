"""The base of the scaling-law demo sweep (`python -m experiments.scaling_demo`): small models on the demo corpus.

A 1024-piece vocabulary keeps the embedding from dominating models of 0.1-1M parameters; heads are 32 wide so that
the narrowest models still have two. The sweep sets the shape, train.steps, optim.warmup_steps and train.run_dir
of each run; validation runs once, at the end, over the whole validation split, to give each run's final loss.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.model.vocab_size = 1024
  config.model.d_model = 128
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 4
  config.model.head_dim = 32
  config.model.ffn_dim = 384
  config.data.tokens_dir = "sweeps/demo_tokens"
  config.train.run_dir = "runs/scaling_demo"
  config.checkpoint.every_steps = 500
  config.checkpoint.max_to_keep = 1
  config.eval.every_steps = 1_000_000  # only at the end of each run
  config.eval.max_batches = 0
  config.eval.sample_every_steps = 1_000_000
  config.log.every_steps = 100
  config.log.noise_scale_every_steps = 0
  return config
