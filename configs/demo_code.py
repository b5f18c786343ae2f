"""The demo model trained on the code source only: the base model of the continued pre-training and
context-extension examples (configs/continue_demo.py, configs/extend_demo.py).

    python -m lm.launch --config configs/demo_code.py

The embedded corpus is tokenized at launch into runs/demo_code/tokens with both of its sources
(the tokenizer sees both); the mixture gives the documentation source no rows, so it is only
evaluated: its validation loss is what the model knows of a domain it has not trained on.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.data.mixture = (("code", 1.0), ("docs", 0.0))
  config.train.run_dir = "runs/demo_code"
  return config
