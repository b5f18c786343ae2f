"""Command line entry point.

    python -m lm.launch --config configs/demo.py [--config.train.steps=200 ...]

The config file's `get_config()` is loaded by ml_collections; any field can be
overridden with `--config.GROUP.FIELD=VALUE`. The config is validated before anything
is built; an invalid one exits with an error naming the key.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lm import config as config_lib
from lm import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (configs/NAME.py).",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # library INFO chatter (orbax, backends) only when asked for
    logging.set_verbosity(logging.WARNING)

  try:
    train.run(_CONFIG.value)  # validates the config before building anything
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
