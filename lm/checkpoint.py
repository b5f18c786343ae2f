"""Checkpoints: an orbax CheckpointManager holding the train state and the data iterator.

Each checkpoint `checkpoints/<step>/` has two items: `state` (step, parameters, optimizer
state, RNG; written by every process, each its own shards) and `data` (the loader's
position: the next step and what the stream depends on, one JSON file for all processes,
since every process's rows follow from the step alone; so a checkpoint restores under any
process count). Saves are asynchronous; orbax only renames a checkpoint into place once
it is complete.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every_steps` steps (and when forced), keeps the last `max_to_keep`."""

  def __init__(self, directory: str, every_steps: int, max_to_keep: int):
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
    """Starts an asynchronous save if `step` is a multiple of `every_steps` (or `force`); returns whether it saved."""
    if not force and step % self.every_steps:
      return False
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iterator.state())),
        force=True,  # the interval is decided above; orbax's own policy would also save the first step
    )

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """The state saved at `step`, laid out as `abstract_state` (a tree of jax.ShapeDtypeStruct
    with shardings, so it may be a different mesh than the one that saved); moves
    `data_iterator` (a `data.loader.TrainIterator`) to the saved position."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    data_iterator.restore(restored["data"])
    return restored["state"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """jax.ShapeDtypeStruct leaves with the given shardings, the target layout of a restore."""
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
