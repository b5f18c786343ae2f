"""Continued pre-training: the code-only demo model (configs/demo_code.py) adapted to documentation text.

    python -m lm.launch --config configs/demo_code.py
    python -m lm.launch --config configs/continue_demo.py                                # 50% replay of code
    python -m lm.launch --config configs/continue_demo.py --config.data.replay_fraction=0 \\
        --config.train.run_dir=runs/continue_demo_no_replay                                # no replay

The run starts from the base model's parameters with a fresh optimizer and a new schedule
(warmup to 0.2 x the base's peak learning rate, then cosine decay). Half of every batch
replays the original domain (code) against forgetting. Both domains are evaluated from step 0:
eval/original/loss (code) shows forgetting, eval/new/loss (docs) adaptation.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.train.init_from = "runs/demo_code"
  config.train.init_learning_rate_fraction = 0.2
  config.data.tokens_dir = "runs/demo_code/tokens"  # the base's shards: its tokenizer
  config.data.mixture = (("docs", 1.0),)  # the new domain
  config.data.replay_sources = ("code",)
  config.data.replay_fraction = 0.5
  config.optim.warmup_steps = 15
  config.train.steps = 150
  config.train.run_dir = "runs/continue_demo"
  config.eval.at_start = True
  config.eval.every_steps = 25
  config.checkpoint.every_steps = 150
  config.eval.sample_every_steps = 150
  return config
