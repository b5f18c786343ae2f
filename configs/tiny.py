"""A seconds-long smoke run: a ~0.2M-parameter model on the embedded corpus.

    python -m lm.launch --config configs/tiny.py
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.vocab_size = 512
  config.model.d_model = 64
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 16
  config.model.ffn_dim = 128
  config.data.seq_len = 64
  config.data.num_packing_bins = 16
  config.data.tokenizer_max_sentences = 50000
  config.optim.peak_learning_rate = 3e-3
  config.optim.warmup_steps = 5
  config.train.run_dir = "runs/tiny"
  config.train.steps = 20
  config.train.global_batch_size = 8
  config.checkpoint.every_steps = 10
  config.eval.every_steps = 10
  config.eval.max_batches = 2
  config.eval.sample_tokens = 16
  config.log.every_steps = 5
  return config
