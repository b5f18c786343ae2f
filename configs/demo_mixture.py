"""The demo model on token shards with an explicit mixture and a curriculum.

    python -m data.tokenizer --config configs/tokenize/demo.py
    python -m data.shards --config configs/tokenize/demo.py
    python -m lm.launch --config configs/demo_mixture.py

Half of the rows come from the documentation and half from code for the first 200 steps;
then documentation takes 80%. The training log prints the planned shares and epochs of
each source at the start and the realised ones at every log step (data/SOURCE/share,
data/SOURCE/epochs in metrics.jsonl); validation loss is reported per source.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.data.tokens_dir = "tokens/demo"
  config.data.mixture = (("code", 0.5), ("docs", 0.5))
  config.data.curriculum = ((200, (("code", 0.2), ("docs", 0.8))),)
  config.train.run_dir = "runs/demo_mixture"
  return config
