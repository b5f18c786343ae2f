"""Command line entry point.

    python -m lm.launch --config configs/demo.py [--config.train.steps=200 ...]

The config file's `get_config()` is loaded by ml_collections; any field can be
overridden with `--config.GROUP.FIELD=VALUE`. The config is validated before anything
is built; an invalid one exits with an error naming the key.

Multi-process runs (one process per host, or per GPU) start every process with the same
command. `--distributed=on` lets JAX find the job from its environment (TPU pod VMs,
SLURM, Open MPI); or name it explicitly:

    python -m lm.launch --config ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

`--distributed=auto` (the default) does the same when those flags are given or SLURM / Open
MPI / a TPU pod announce more than one process, and runs a single process otherwise.

CPU runs restart themselves once at start under glibc malloc settings that reuse freed memory
(`train.host_allocator`, see lm/process.py).

On SIGTERM (or a JAX preemption notice in a multi-process job) the run saves a checkpoint at
the current step and exits with status 143; the same command continues it. Exit status 2 is
a config error, 1 a run stopped by its loss guard (guard.max_rollbacks).
"""

import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lm import config as config_lib
from lm import process
from lm import sharding
from lm import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (configs/NAME.py).",
                                          lock_config=True)
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Multi-process start: on = jax.distributed.initialize() (JAX detects TPU pods, SLURM, "
                                 "Open MPI), off = one process, auto = on when the flags below are given or the "
                                 "environment shows a multi-process job.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0's coordinator service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  try:
    process.apply_host_allocator(_CONFIG.value.train.host_allocator)  # may restart this command: before JAX starts
  except ValueError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS["verbosity"].present:  # library INFO chatter (orbax, backends) only when asked for
    logging.set_verbosity(logging.WARNING)
  try:
    started = sharding.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                              _PROCESS_ID.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if started and started.startswith("process 0 "):
    print(f"distributed: {started}", flush=True)

  try:
    result = train.run(_CONFIG.value)  # validates the config before building anything
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.RunStopped as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if result["preempted"]:  # saved and stopped early: the exit status a SIGTERM would have given
    sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
  app.run(main)
