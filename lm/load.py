"""A run directory read back for use: its config, tokenizer and the parameters of one checkpoint.

Evaluation, generation and export all start here:

    run = load.load_run("runs/demo")            # the newest sound checkpoint
    run = load.load_run("runs/demo", step=200)  # or one step

The parameters are laid out by the run's own logical-axis rules on a mesh of this host's
devices: the saved mesh when it fits them, else data parallelism over all of them.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import jax
import ml_collections

from data import tokenizer as tokenizer_lib
from lm import checkpoint as checkpoint_lib
from lm import config as config_lib
from lm import run_dir as run_dir_lib
from lm import sharding


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  run_dir: str
  config: ml_collections.ConfigDict  # the run's config, platform choices made for this host
  tokenizer: tokenizer_lib.Tokenizer
  trainer: Any  # lm.train.Trainer: the model, mesh, shardings and jitted step functions
  params: Any  # parameter tree, sharded as trainer.state_shardings.params
  step: int  # the checkpoint's step


class _NoData:
  """Stands in for the loader: a restore for evaluation does not move any data stream."""

  def restore(self, state: dict) -> None:
    del state


def fitting_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The run's mesh when its sizes fit this host's devices, else data parallelism over all of them."""
  try:
    return sharding.make_mesh(config.mesh)
  except (sharding.ShardingError, ValueError):
    mesh_config = copy.deepcopy(config.mesh)
    for axis in ("fsdp", "expert", "tensor", "dcn_data", "dcn_fsdp", "dcn_expert", "dcn_tensor"):
      mesh_config[axis] = 1
    mesh_config.data = -1
    return sharding.make_mesh(mesh_config)


def load_run(run_dir: str, step: int | None = None, log=print) -> LoadedRun:
  """Reads `run_dir`: config.json, tokenizer/ and the checkpoint at `step` (None = the newest sound one).

  Raises:
    ConfigError: no config, tokenizer or checkpoint there, or no checkpoint at `step` (the message lists
      the steps there are).
  """
  from lm import train  # pylint: disable=import-outside-toplevel  # train imports this module's users

  run_dir = os.path.abspath(run_dir)
  config = config_lib.for_platform(run_dir_lib.load_config(run_dir), jax.default_backend())
  tokenizer_dir = os.path.join(run_dir, "tokenizer")
  if not tokenizer_lib.exists(tokenizer_dir):
    raise config_lib.ConfigError(f"{tokenizer_dir} holds no tokenizer: {run_dir} has not been launched yet")
  tokenizer = tokenizer_lib.load(tokenizer_dir)
  trainer = train.build(config, fitting_mesh(config))
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), every_steps=1, max_to_keep=1 << 30)
  try:
    steps = checkpointer.all_steps()
    if step is None:
      found, state = checkpointer.restore_latest(trainer.abstract_state, _NoData(), log)
      if found is None:
        raise config_lib.ConfigError(f"{run_dir}/checkpoints holds no checkpoint yet")
    else:
      if step not in steps:
        raise config_lib.ConfigError(f"{run_dir}/checkpoints has no step {step}; it has steps "
                                     f"{', '.join(map(str, steps)) or 'none'}")
      found, state = step, checkpointer.restore(step, trainer.abstract_state, _NoData())
  except checkpoint_lib.CheckpointError as e:
    raise config_lib.ConfigError(str(e)) from None
  finally:
    checkpointer.close()
  return LoadedRun(run_dir, config, tokenizer, trainer, state.params, found)
