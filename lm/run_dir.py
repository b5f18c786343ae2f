"""The run directory: the config snapshot, the launch record, and what a relaunch may change.

A run directory holds config.json (the config of the latest launch), run.json (the git
revision of the code and one entry per launch: time, command, config changes, the step it
resumed from; and N, D and C of the run), tokenizer/, tokens/ (when tokenized at launch),
checkpoints/, events/ (tensorboard), metrics.jsonl, samples.txt, shardings.txt and, once the
run has completed, result.json (final step, validation loss, compute).

Relaunching into an existing run directory continues that run. Changes that keep the
state's shapes and the data stream (learning rate, step count, mesh, attention kernel, ...)
are allowed and logged; changes of the state's shapes or of the data are refused with the
keys listed.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import ml_collections

from lm import config as config_lib

CONFIG = "config.json"
RUN_RECORD = "run.json"
RESULT = "result.json"
# data fields that only change how the same batches are read
RUNTIME_DATA_KEYS = ("num_workers", "prefetch_batches", "verify_checksums")
# groups whose fields may shape the train state (parameters, optimizer moments, guard history)
STATE_GROUPS = ("model", "optim", "guard", "train")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def changes(saved: dict, current: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """'group.field' -> (saved value, current value) for every field that differs (JSON-normalised)."""
  old, new = _flatten(saved), _flatten(json.loads(current.to_json()))
  return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}


def _as_config_value(value: Any) -> Any:
  """A JSON value as the config holds it: lists become tuples, nested too (no config field is a list)."""
  return tuple(_as_config_value(v) for v in value) if isinstance(value, list) else value


def _with(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the 'group.field' values set (fields the config does not have are ignored)."""
  result = copy.deepcopy(config)
  with result.unlocked():
    for key, value in values.items():
      group, _, field = key.partition(".")
      if group in result and field in result[group]:
        result[group][field] = _as_config_value(value)
  return result


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  """The config of the latest launch of `run_dir` (its config.json over the base config).

  Raises:
    ConfigError: `run_dir` has no readable config.json.
  """
  from configs import base  # pylint: disable=import-outside-toplevel
  path = os.path.join(run_dir, CONFIG)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise config_lib.ConfigError(f"{path} does not exist: {run_dir} is not a run directory") from None
  except ValueError as e:
    raise config_lib.ConfigError(f"{path} is not valid JSON ({e})") from None
  return _with(base.get_config(), _flatten(saved))


def _fmt(value: Any) -> str:
  return json.dumps(value) if not isinstance(value, str) else repr(value)


def describe(changed: dict[str, tuple[Any, Any]]) -> str:
  return ", ".join(f"{key} {_fmt(old)} -> {_fmt(new)}" for key, (old, new) in changed.items())


def check_relaunch(saved: dict, config: ml_collections.ConfigDict,
                   layout: Callable[[ml_collections.ConfigDict], dict]) -> dict[str, tuple[Any, Any]]:
  """The changes of `config` against the `saved` config.json of the same run dir, if they are allowed.

  Args:
    saved: the parsed config.json of the previous launch.
    config: this launch's config.
    layout: config -> {state leaf name: (shape, dtype)} (lm.train.state_layout).

  Raises:
    ConfigError: listing the fields that change the state's shapes or dtypes, or the data.
  """
  changed = changes(saved, config)
  refused = {k: v for k, v in changed.items()
             if k.startswith("data.") and k.split(".", 1)[1] not in RUNTIME_DATA_KEYS
             or k == "train.global_batch_size"}
  candidates = [k for k in changed if k.split(".")[0] in STATE_GROUPS and k not in refused]
  if candidates:
    previous = _with(config, {k: v[0] for k, v in changed.items()})
    try:
      before = layout(previous)
    except Exception:  # pylint: disable=broad-except  # the saved config no longer builds: compare nothing
      before = None
    if before is not None and layout(config) != before:
      for key in candidates:  # one field at a time, to name exactly the fields that change shapes
        try:
          differs = layout(_with(previous, {key: changed[key][1]})) != before
        except Exception:  # pylint: disable=broad-except  # a field that alone breaks the model changes it
          differs = True
        if differs:
          refused[key] = changed[key]
      if not any(k in refused for k in candidates):  # only a combination changes shapes: name them all
        refused.update({k: changed[k] for k in candidates})
  if refused:
    raise config_lib.ConfigError(
        f"{config.train.run_dir} holds a run whose saved config differs in fields that change the state's shapes "
        f"or the data: {describe(refused)} (saved -> now); use a new train.run_dir or the saved values")
  return changed


def git_revision() -> tuple[str | None, bool | None]:
  """(commit of the code's checkout, whether tracked files differ from it); (None, None) outside git."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    revision = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    if revision.returncode:
      return None, None
    status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
    return revision.stdout.strip(), bool(status.stdout.strip())
  except (OSError, subprocess.SubprocessError):
    return None, None


def prepare(config: ml_collections.ConfigDict, is_main: bool,
            layout: Callable[[ml_collections.ConfigDict], dict]) -> dict[str, tuple[Any, Any]]:
  """Creates the run dir and writes this launch's config.json; returns the allowed changes from the last launch.

  Raises:
    ConfigError: the run dir holds a run whose config differs in shapes or data (see check_relaunch).
  """
  run_dir = config.train.run_dir
  path = os.path.join(run_dir, CONFIG)
  changed = {}
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except ValueError as e:
      raise config_lib.ConfigError(f"{path} is not valid JSON ({e}); restore it or use a new train.run_dir") from None
    changed = check_relaunch(saved, config, layout)
  if is_main:
    os.makedirs(run_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(tmp, path)
  return changed


def record_launch(run_dir: str, changed: dict[str, tuple[Any, Any]], resumed_from: int | None,
                  process_count: int, mfu_basis: dict | None = None, compute: dict | None = None) -> None:
  """Appends this launch to run.json (and records the code's git revision, the latest one at the top).

  `mfu_basis`: the FLOPs per token and the peak FLOP/s that this launch's MFU is computed from.
  `compute`: N, D and C of the run as configured (`lm.params.training_compute`), kept at the top.
  """
  path = os.path.join(run_dir, RUN_RECORD)
  record = {"launches": []}
  if os.path.exists(path):
    try:
      with open(path) as f:
        record = json.load(f)
    except ValueError:
      record = {"launches": [], "unreadable_previous_record": True}
  revision, dirty = git_revision()
  record.update(git_revision=revision, git_dirty=dirty)
  if compute is not None:
    record["compute"] = compute
  try:  # a launch in progress has not completed, whatever an earlier launch of a shorter run wrote
    os.remove(os.path.join(run_dir, RESULT))
  except FileNotFoundError:
    pass
  record.setdefault("launches", []).append({
      "time": time.time(), "host": socket.gethostname(), "processes": process_count, "command": sys.argv,
      "git_revision": revision, "git_dirty": dirty, "resumed_from": resumed_from,
      "config_changes": {k: list(v) for k, v in changed.items()}, "mfu_basis": mfu_basis})
  write_json(path, record)


def write_result(run_dir: str, result: dict[str, Any]) -> None:
  """Writes result.json: the end of a completed training run (final step, validation loss, compute, guard
  events). Sweeps read it to tell finished runs from interrupted ones; it is replaced by every completed launch."""
  write_json(os.path.join(run_dir, RESULT), result)


def read_result(run_dir: str) -> dict[str, Any] | None:
  """The result.json of `run_dir`, or None when the run has not completed (or the file is unreadable)."""
  try:
    with open(os.path.join(run_dir, RESULT)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, value: Any) -> None:
  """Writes `value` as JSON to `path` atomically (a reader sees the old file or the whole new one)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, allow_nan=True)
  os.replace(tmp, path)
