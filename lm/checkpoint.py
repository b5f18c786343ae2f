"""Checkpoints: an orbax CheckpointManager holding the train state and the data iterator, with integrity records.

Each checkpoint `checkpoints/<step>/` has two items: `state` (step, parameters, optimizer
state, RNG, guard history; written by every process, each its own shards) and `data` (the
loader's position: the next batch and what the stream depends on, one JSON file for all
processes, since every process's rows follow from the batch index alone; so a checkpoint
restores under any process count).

Saves are asynchronous: orbax writes into a temporary directory and renames it into place
once every process has finished, so a save cut short never looks like a checkpoint; leftover
temporary directories are removed when the next run opens the directory. Once a save is
complete, process 0 writes `checkpoints/<step>/integrity.json` (size and sha256 of every file,
hashed in a background thread before the next save starts). `restore_latest` checks the
newest checkpoint against its record and, if a file is missing, shorter or altered (a torn
write, a disk fault), reports it, moves it to `checkpoints_corrupt/` and takes the one before;
one that orbax cannot read is reported and passed over.

Retention: the last `max_to_keep` checkpoints, plus every one whose step is a multiple of
`keep_every_steps` (0 = none).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from data import shards

INTEGRITY = "integrity.json"
CORRUPT_DIR = "checkpoints_corrupt"  # sibling of the checkpoints directory


class CheckpointError(ValueError):
  """A checkpoint that cannot be used by this run: another model, or every checkpoint corrupt."""


def _file_record(path: str) -> dict:
  return {"bytes": os.path.getsize(path), "sha256": shards.file_sha256(path)}


def _files(step_dir: str) -> list[str]:
  found = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), step_dir)
      if relative != INTEGRITY:
        found.append(relative)
  return sorted(found)


def write_integrity(step_dir: str) -> None:
  """Records size and sha256 of every file of the complete checkpoint `step_dir` (atomically)."""
  record = {"files": {name: _file_record(os.path.join(step_dir, name)) for name in _files(step_dir)}}
  tmp = os.path.join(step_dir, INTEGRITY + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(step_dir, INTEGRITY))


def verify_integrity(step_dir: str) -> str | None:
  """None if every file of `step_dir` matches its integrity record (or there is no record yet), else what is wrong."""
  path = os.path.join(step_dir, INTEGRITY)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError) as e:
    return f"unreadable {INTEGRITY} ({e})"
  for name, expected in files.items():
    file_path = os.path.join(step_dir, name)
    if not os.path.exists(file_path):
      return f"{name} is missing"
    size = os.path.getsize(file_path)
    if size != expected["bytes"]:
      return f"{name} has {size} bytes, {expected['bytes']} were written"
    if shards.file_sha256(file_path) != expected["sha256"]:
      return f"{name} does not match the sha256 recorded when it was written"
  return None


def leaf_names(tree: Any) -> dict[str, Any]:
  """'params/blocks/layer_0/mlp/up' -> leaf, for every leaf of a nested tree of dicts and dataclasses."""
  named = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    parts = []
    for entry in path:
      for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
          parts.append(str(getattr(entry, attribute)))
          break
    named["/".join(parts)] = leaf
  return named


def mismatches(saved: Any, expected: Any) -> list[str]:
  """What differs between the saved state's metadata tree and the expected abstract state, one line per name."""
  saved_leaves, expected_leaves = leaf_names(saved), leaf_names(expected)
  problems = [f"{name}: not in the checkpoint" for name in expected_leaves if name not in saved_leaves]
  problems += [f"{name}: in the checkpoint, not in this model" for name in saved_leaves if name not in expected_leaves]
  for name in expected_leaves.keys() & saved_leaves.keys():
    want, have = expected_leaves[name], saved_leaves[name]
    have_shape = tuple(getattr(have, "shape", ()) or ())
    if tuple(want.shape) != have_shape:
      problems.append(f"{name}: shape {have_shape} in the checkpoint, {tuple(want.shape)} in this model")
  return sorted(problems)


class Checkpointer:
  """Saves every `every_steps` steps (and when forced); keeps the last `max_to_keep` and every `keep_every_steps`-th."""

  def __init__(self, directory: str, every_steps: int, max_to_keep: int, keep_every_steps: int = 0):
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    if keep_every_steps:
      policies.append(checkpoint_managers.EveryNSteps(interval_steps=keep_every_steps))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies)),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )
    self._unrecorded: list[int] = []  # steps saved whose integrity record is not yet written
    self._hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1) if jax.process_index() == 0 else None
    self._hashing: list[concurrent.futures.Future] = []

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _record_finished(self) -> None:
    """Hands the integrity record of every save orbax has completed to the background hasher."""
    if not self._unrecorded or self.manager.is_saving_in_progress():
      return
    for step in self._unrecorded:
      if self._hasher is not None and os.path.isdir(self.step_dir(step)):
        self._hashing.append(self._hasher.submit(self._record_quietly, self.step_dir(step)))
    self._unrecorded = []

  @staticmethod
  def _record_quietly(step_dir: str) -> None:
    try:
      write_integrity(step_dir)
    except FileNotFoundError:  # removed by retention meanwhile
      pass

  def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
    """Starts an asynchronous save if `step` is a multiple of `every_steps` (or `force`); returns whether it saved."""
    self._record_finished()
    if not force and step % self.every_steps:
      return False
    if step in self.manager.all_steps():  # e.g. preempted right after a scheduled save, or an unreadable one kept
      return False
    for future in self._hashing:  # orbax's retention may delete the directory being hashed during the next save
      future.result()
    self._hashing = []
    saved = self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iterator.state())),
        force=True,  # the interval is decided above; orbax's own policy would also save the first step
    )
    if saved:
      self._unrecorded.append(step)
    return saved

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointError naming every parameter whose name or shape differs from `abstract_state`."""
    self._check_metadata(step, self.manager.item_metadata(step)["state"], abstract_state)

  def _check_metadata(self, step: int, saved: Any, abstract_state: Any) -> None:
    problems = mismatches(saved, abstract_state)
    if problems:
      # The optimizer moments mirror the parameters: name the parameters, count the rest.
      named = [p for p in problems if p.startswith("params/")] or problems
      rest = len(problems) - len(named[:30])
      shown = "\n  ".join(named[:30]) + (f"\n  ... and {rest} optimizer-state or other entries" if rest else "")
      raise CheckpointError(f"{self.step_dir(step)} holds another model's state:\n  {shown}")

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """The state saved at `step`, laid out as `abstract_state` (a tree of jax.ShapeDtypeStruct
    with shardings, so it may be a different mesh than the one that saved); moves
    `data_iterator` (a `data.loader.TrainIterator`) to the saved position."""
    self.check_compatible(step, abstract_state)
    state, data_state = self._read(step, abstract_state)
    data_iterator.restore(data_state)
    return state

  def _read(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_latest(self, abstract_state: Any, data_iterator: Any, log: Callable[[str], None],
                     before: int | None = None) -> tuple[int | None, Any]:
    """(step, state) of the newest sound checkpoint (older than `before` if given), or (None, None) if there is none.

    A checkpoint whose files do not match its integrity record is reported through `log`, moved
    to `checkpoints_corrupt/` (so its step can be saved again) and the previous one is tried. One
    that orbax cannot read is reported and passed over but left in place, since the cause may be
    passing (storage, memory). A sound checkpoint without a record (the run stopped before it was
    written) gets one now. Every process takes the same decisions: process 0's list of steps and
    verdicts, and a read that failed on any process failed for all.

    Raises:
      CheckpointError: the checkpoints hold another model's state, or none of them could be used.
    """
    self.wait()
    steps = [s for s in _broadcast_steps(self.all_steps()) if before is None or s < before]
    failed = []
    for step in reversed(steps):
      problem = verify_integrity(self.step_dir(step)) if jax.process_index() == 0 else None
      problem = _broadcast_text(problem)
      if problem is not None:
        failed.append(step)
        log(f"checkpoint {self.step_dir(step)} is corrupt or incomplete: {problem}; moved to {CORRUPT_DIR}/, "
            "using the previous checkpoint")
        self._set_aside(step)
        continue
      metadata, error = None, None
      try:
        metadata = self.manager.item_metadata(step)["state"]
      except Exception as e:  # pylint: disable=broad-except  # any read failure means: try the previous one
        error = _read_failure(e)
      if _any_process(error is not None):
        failed.append(step)
        log(f"checkpoint {self.step_dir(step)} is unreadable: {error or 'failed on another process'}; "
            "using the previous checkpoint")
        continue
      self._check_metadata(step, metadata, abstract_state)  # another model is an error, not corruption
      try:
        state, data_state = self._read(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        state, error = None, _read_failure(e)
      if _any_process(error is not None):
        failed.append(step)
        log(f"checkpoint {self.step_dir(step)} is unreadable: {error or 'failed on another process'}; "
            "using the previous checkpoint")
        continue
      data_iterator.restore(data_state)  # a different data stream is the caller's error, not corruption
      if jax.process_index() == 0 and not os.path.exists(os.path.join(self.step_dir(step), INTEGRITY)):
        write_integrity(self.step_dir(step))
      return step, state
    if failed:
      raise CheckpointError(f"no checkpoint in {self.directory} could be used ({', '.join(map(str, failed))}); "
                            f"corrupt ones were moved to {os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)}")
    return None, None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      target = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR, f"{step}-{int(time.time())}")
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(self.step_dir(step), target)
    _barrier(f"checkpoint {step} set aside")
    self.manager.reload()

  def delete_after(self, step: int) -> list[int]:
    """Deletes every checkpoint newer than `step` (a rollback's abandoned future); returns their steps."""
    self.wait()
    newer = [s for s in self.all_steps() if s > step]
    for s in newer:
      self.manager.delete(s)
    return newer

  def wait(self) -> None:
    """Blocks until pending asynchronous saves and their integrity records are complete."""
    self.manager.wait_until_finished()
    self._record_finished()
    for future in self._hashing:
      future.result()
    self._hashing = []

  def close(self) -> None:
    self.wait()
    self.manager.close()
    if self._hasher is not None:
      self._hasher.shutdown()


def _read_failure(error: Exception) -> str:
  return f"orbax could not read it ({type(error).__name__}: {str(error).splitlines()[0][:300]})"


def _broadcast_text(text: str | None) -> str | None:
  """Process 0's `text` on every process (integrity is checked once, on process 0)."""
  if jax.process_count() == 1:
    return text
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  encoded = (text or "").encode()[:4096]
  buffer = np.zeros(4097, np.uint8)
  buffer[0] = text is not None
  buffer[1:1 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  return bytes(buffer[1:]).rstrip(b"\0").decode(errors="replace") if buffer[0] else None


def _any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.asarray(multihost_utils.process_allgather(np.array([flag], np.int32))).any())


def _broadcast_steps(steps: list[int]) -> list[int]:
  """Process 0's list of checkpoint steps on every process (their views of a shared directory may lag)."""
  if jax.process_count() == 1:
    return steps
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  count = int(np.asarray(multihost_utils.broadcast_one_to_all(np.array(len(steps), np.int64))))
  padded = np.zeros(max(count, 1), np.int64)
  if jax.process_index() == 0:
    padded[:count] = steps
  return [int(s) for s in np.asarray(multihost_utils.broadcast_one_to_all(padded))[:count]]


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """jax.ShapeDtypeStruct leaves with the given shardings, the target layout of a restore."""
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
