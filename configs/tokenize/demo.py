"""The demo corpus (Python's own docs and standard-library source) as a 4096-piece BPE vocabulary.

    python -m data.tokenizer --config configs/tokenize/demo.py
    python -m data.shards --config configs/tokenize/demo.py
    python -m lm.launch --config configs/demo.py --config.data.tokens_dir=tokens/demo
"""

from configs.tokenize import base


def get_config():
  config = base.get_config()
  config.tokenizer.output_dir = "tokenizers/demo"
  config.tokenizer.vocab_size = 4096
  config.shards.output_dir = "tokens/demo"
  return config
