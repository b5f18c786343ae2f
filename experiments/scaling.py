"""Scaling-law sweeps: plan a grid of runs from compute budgets, run it, fit the laws, predict a larger run.

    python -m experiments.scaling plan --base configs/scaling_demo.py --out sweeps/demo \\
        --budgets 6e12,1.2e13,2.4e13 --sizes 120k,340k,830k,1.6M
    python -m experiments.scaling run sweeps/demo
    python -m experiments.scaling fit sweeps/demo

plan   An IsoFLOP grid (--budgets: for each compute budget C and each model size N, D = C / (6N) tokens) or an
       N x D grid (--tokens). A size is a parameter count (120k, 1.6M, 2e9), met by the nearest model of a shape
       ladder built from the base config (widths in steps of head_dim, depth = width / aspect ratio), or an explicit
       shape WIDTHxDEPTH (256x4). Each run gets train.steps = D / (global_batch_size x seq_len), so its cosine
       schedule ends at its own token budget, a warmup of --warmup_fraction of its steps, and its own run dir.
       Written: DIR/plan.json (every run's shape, N, D, C) and DIR/configs/RUN.py, a config file per run (the base
       config plus the run's fields). --append adds runs to an existing plan (e.g. a held-out larger run, --role
       holdout, which the fits leave out and predict).
run    Locally: the runs one after another (smallest compute first) as `python -m lm.launch --config
       DIR/configs/RUN.py`, each logging to DIR/logs/RUN.log; a run whose run dir holds a result.json for its
       steps is finished and skipped, an interrupted one resumes from its last checkpoint (the same command), a
       run stopped by its loss guard is recorded as diverged and the sweep goes on. --cluster tpu|slurm writes
       DIR/launch.sh, one launch command per unfinished run, instead of running anything.
fit    Reads each run's result.json (final validation loss) and run.json (N, D, C), fits Kaplan power laws,
       Chinchilla Approach 2 (IsoFLOP parabolas) and Approach 3 (parametric law, bootstrap intervals) with
       lm.scaling, and writes DIR/fit/fit.json, DIR/fit/runs.tsv and PNGs: loss curves, IsoFLOP parabolas,
       frontier. Held-out runs get their predicted and measured losses. Diverged runs are excluded and listed;
       unfinished runs are listed and left out.

N is the total parameter count (lm.params.training_compute: embeddings included, as in Hoffmann et al.);
non-embedding counts and the full FLOP count with attention are recorded beside it.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from typing import Any, Sequence

import ml_collections
import numpy as np

from lm import metrics as metrics_lib
from lm import params as params_lib
from lm import report as report_lib
from lm import run_dir as run_dir_lib
from lm import scaling

PLAN = "plan.json"
GUARD_STOPPED_EXIT = 1  # lm.launch's exit status when the loss guard stops a run (guard.max_rollbacks)
CONFIG_ERROR_EXIT = 2
ROLES = ("grid", "holdout")
_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


class PlanError(ValueError):
  """A plan that cannot be made or read; the message names the argument, run or file."""


# ----------------------------------------------------------------------------------------------------------------
# Configs.


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the Python config file at `path` (as ml_collections' --config flag loads it)."""
  if not os.path.isfile(path):
    raise PlanError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise PlanError(f"{path} has no get_config()")
  return module.get_config()


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config.GROUP.FIELD = value for key 'GROUP.FIELD'; an unknown key or a value of the wrong type is an error."""
  *groups, field = key.split(".")
  node = config
  for group in groups:
    if group not in node or not isinstance(node[group], ml_collections.ConfigDict):
      raise PlanError(f"unknown config key {key!r}")
    node = node[group]
  if field not in node:
    raise PlanError(f"unknown config key {key!r}")
  try:
    node[field] = value
  except (TypeError, ValueError) as e:
    raise PlanError(f"config key {key!r}: {e}") from None


def derive_config(base_path: str, fields: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config of one run: `get_config()` of `base_path` with `fields` ('group.field' -> value) set."""
  config = load_config_file(base_path)
  for key, value in fields.items():
    set_field(config, key, tuple(value) if isinstance(value, list) else value)
  return config


def parse_setting(text: str) -> tuple[str, Any]:
  """'group.field=value' -> (key, value); the value is a Python literal (2, 1e-3, 'x', (1, 2)) or else a string."""
  key, sep, raw = text.partition("=")
  if not sep or not key:
    raise PlanError(f"--set {text!r}: expected GROUP.FIELD=VALUE")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return key.strip(), value


# ----------------------------------------------------------------------------------------------------------------
# Model sizes.


@dataclasses.dataclass(frozen=True)
class Shape:
  """One model of the sweep: the model fields that change with size, and its parameter counts."""
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  ffn_dim: int
  params_total: int
  params_non_embedding: int

  def fields(self) -> dict[str, int]:
    return {"model.d_model": self.d_model, "model.num_layers": self.num_layers, "model.num_heads": self.num_heads,
            "model.num_kv_heads": self.num_kv_heads, "model.ffn_dim": self.ffn_dim}

  @property
  def text(self) -> str:
    return f"{self.d_model}x{self.num_layers}"


def make_shape(base: ml_collections.ConfigDict, d_model: int, num_layers: int) -> Shape:
  """The base model at width `d_model` (heads of base head_dim; the base's query / kv head ratio and MLP width
  ratio, the MLP rounded to a multiple of 16) and depth `num_layers`, with its exact parameter counts."""
  m = base.model
  if d_model % m.head_dim:
    raise PlanError(f"width {d_model} is not a multiple of model.head_dim ({m.head_dim})")
  if num_layers < 1 or num_layers % len(m.attention_pattern):
    raise PlanError(f"depth {num_layers} is not a positive multiple of the attention pattern's length "
                    f"({len(m.attention_pattern)})")
  heads = d_model // m.head_dim
  group = m.num_heads // m.num_kv_heads if m.num_heads % m.num_kv_heads == 0 else 1
  kv_heads = heads // group if heads % group == 0 else heads
  ffn = max(16, int(round(m.ffn_dim / m.d_model * d_model / 16)) * 16)
  model = copy.deepcopy(m)
  model.unlock()
  model.update(d_model=d_model, num_layers=num_layers, num_heads=heads, num_kv_heads=kv_heads, ffn_dim=ffn)
  counts = params_lib.count_parameters(model)
  return Shape(d_model, num_layers, heads, kv_heads, ffn, counts["active"], counts["active_non_embedding"])


def shape_ladder(base: ml_collections.ConfigDict, aspect: float, max_params: float) -> list[Shape]:
  """Models of increasing size: width w in steps of head_dim, depth round(w / aspect) (at least 1, a multiple of
  the attention pattern's length), up to the first one above `max_params`."""
  m, ladder = base.model, []
  step = len(m.attention_pattern)
  width = m.head_dim
  while True:
    depth = max(step, int(round(width / aspect / step)) * step)
    shape = make_shape(base, width, depth)
    ladder.append(shape)
    if shape.params_total > max_params or width > 1 << 16:
      return ladder
    width += m.head_dim


def nearest_shape(shapes: Sequence[Shape], params: float) -> Shape:
  """The shape whose total parameter count is nearest `params` in log N."""
  return min(shapes, key=lambda shape: abs(math.log(shape.params_total / params)))


def parse_count(text: str) -> float:
  """'120k', '1.6M', '2e9', '1B' -> a positive float."""
  match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
  if not match:
    raise PlanError(f"{text!r} is not a number (e.g. 120k, 1.6M, 2e9)")
  value = float(match.group(1)) * _SUFFIXES.get(match.group(2).lower(), 1.0)
  if not (math.isfinite(value) and value > 0):
    raise PlanError(f"{text!r} is not a positive number")
  return value


def resolve_sizes(base: ml_collections.ConfigDict, sizes: Sequence[str], aspect: float,
                  tolerance: float = 0.25) -> list[Shape]:
  """Shapes for `sizes`: 'WIDTHxDEPTH' as given, a parameter count as the ladder model nearest in log N (refused
  when that is more than `tolerance` away, relative)."""
  counts = {text: parse_count(text) for text in sizes if not re.fullmatch(r"\s*\d+x\d+\s*", text)}
  ladder = shape_ladder(base, aspect, max(counts.values()) * 2) if counts else []
  shapes = []
  for text in sizes:
    explicit = re.fullmatch(r"\s*(\d+)x(\d+)\s*", text)
    if explicit:
      shapes.append(make_shape(base, int(explicit.group(1)), int(explicit.group(2))))
      continue
    target = counts[text]
    nearest = nearest_shape(ladder, target)
    if abs(nearest.params_total / target - 1) > tolerance:
      raise PlanError(f"--sizes {text}: the nearest model of the shape ladder (aspect ratio {aspect:g}, widths in "
                      f"steps of {base.model.head_dim}) has {nearest.params_total:,} parameters ({nearest.text}), "
                      f"more than {tolerance:.0%} away; give a shape WIDTHxDEPTH or another size")
    shapes.append(nearest)
  seen = {}
  for text, shape in zip(sizes, shapes):
    if shape.text in seen:
      raise PlanError(f"--sizes {seen[shape.text]} and {text} give the same model ({shape.text}, "
                      f"{shape.params_total:,} parameters)")
    seen[shape.text] = text
  return shapes


def short(value: float) -> str:
  """1234567 -> '1.23M' (3 significant digits, k / M / B / T)."""
  for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if value >= scale:
      return f"{value / scale:.3g}{suffix}"
  return f"{value:.3g}"


# ----------------------------------------------------------------------------------------------------------------
# Planning.


def plan_runs(base_path: str, settings: dict[str, Any], shapes: Sequence[Shape], *, budgets: Sequence[float] = (),
              tokens: Sequence[float] = (), out_dir: str, warmup_fraction: float, min_steps: int,
              role: str = "grid") -> list[dict[str, Any]]:
  """One entry per (budget or token count) x shape: name, role, budget (nominal FLOPs, IsoFLOP grids), shape,
  fields (the config fields the run sets over the base config), and N, D, C as lm.params.training_compute
  counts them for the rounded step count."""
  if bool(budgets) == bool(tokens):
    raise PlanError("give either --budgets (an IsoFLOP grid) or --tokens (an N x D grid)")
  if not 0 <= warmup_fraction < 1:
    raise PlanError(f"--warmup_fraction must be in [0, 1); got {warmup_fraction}")
  base = derive_config(base_path, settings)
  tokens_per_step = base.train.global_batch_size * base.data.seq_len
  runs = []
  for amount in (budgets or tokens):
    for shape in shapes:
      target_tokens = amount / (scaling.FLOPS_PER_PARAM_TOKEN * shape.params_total) if budgets else amount
      steps = int(round(target_tokens / tokens_per_step))
      label = f"C{amount:.3g}" if budgets else f"D{short(amount)}"
      name = f"{label}_N{short(shape.params_total)}".replace("+", "")
      if steps < min_steps:
        raise PlanError(
            f"run {name} ({shape.text}, {shape.params_total:,} parameters): {target_tokens:,.0f} tokens are "
            f"{target_tokens / tokens_per_step:.1f} steps of {tokens_per_step:,} tokens, fewer than --min_steps "
            f"{min_steps}; use a larger budget, a smaller model or a smaller batch")
      fields = {**settings, **shape.fields(), "train.steps": steps,
                "optim.warmup_steps": int(round(warmup_fraction * steps)),
                "train.run_dir": os.path.join(out_dir, "runs", name)}
      compute = params_lib.training_compute(derive_config(base_path, fields))
      runs.append({"name": name, "role": role, "budget": float(amount) if budgets else None,
                   "shape": dataclasses.asdict(shape), "fields": fields, **compute})
  return runs


def write_plan(out_dir: str, base_path: str, runs: list[dict[str, Any]], append: bool) -> dict[str, Any]:
  """Writes (or extends, with `append`) DIR/plan.json and a config file per run; returns the plan."""
  path = os.path.join(out_dir, PLAN)
  if os.path.exists(path) and not append:
    raise PlanError(f"{path} exists: plan into another directory, or add runs with --append")
  if append:
    plan = read_plan(out_dir)
    if plan["base"] != base_path:
      raise PlanError(f"--append: {path} was planned from {plan['base']}, not {base_path}")
  else:
    plan = {"base": base_path, "runs": []}
  names = {run["name"] for run in plan["runs"]}
  for run in runs:
    if run["name"] in names:
      raise PlanError(f"run {run['name']} is already in {path}")
  plan["runs"] += runs
  os.makedirs(os.path.join(out_dir, "configs"), exist_ok=True)
  for run in runs:
    with open(config_path(out_dir, run["name"]), "w") as f:
      f.write(_config_file(out_dir, base_path, run))
  run_dir_lib.write_json(path, plan)
  return plan


def config_path(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, "configs", f"{name}.py")


def _config_file(out_dir: str, base_path: str, run: dict[str, Any]) -> str:
  fields = "".join(f"    {key!r}: {value!r},\n" for key, value in run["fields"].items())
  budget = f"C = {run['budget']:.3g} FLOPs, " if run["budget"] else ""
  return (f'"""Run {run["name"]} of the sweep in {out_dir} ({run["role"]}): {budget}N = {run["params_total"]:,.0f}, '
          f'D = {run["tokens"]:,.0f} tokens.\n\n'
          f"Written by `python -m experiments.scaling plan`: the base config {base_path} with the fields below.\n"
          f'"""\n\nfrom experiments import scaling\n\nBASE = {base_path!r}\nFIELDS = {{\n{fields}}}\n\n\n'
          f"def get_config():\n  return scaling.derive_config(BASE, FIELDS)\n")


def read_plan(out_dir: str) -> dict[str, Any]:
  path = os.path.join(out_dir, PLAN)
  try:
    with open(path) as f:
      plan = json.load(f)
  except OSError:
    raise PlanError(f"no plan at {path}: make one with `python -m experiments.scaling plan --out {out_dir} ...`"
                    ) from None
  except ValueError as e:
    raise PlanError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(plan, dict) or "runs" not in plan or "base" not in plan:
    raise PlanError(f"{path}: expected an object with 'base' and 'runs'")
  return plan


def plan_table(runs: Sequence[dict[str, Any]]) -> str:
  lines = [f"{'run':<22s} {'role':<8s} {'shape':>8s} {'N':>11s} {'N non-emb':>11s} {'D tokens':>12s} "
           f"{'D/N':>6s} {'steps':>6s} {'C = 6ND':>10s} {'C full':>10s}"]
  for run in runs:
    lines.append(f"{run['name']:<22s} {run['role']:<8s} {run['shape']['d_model']:>4d}x{run['shape']['num_layers']:<3d} "
                 f"{run['params_total']:>11,.0f} {run['params_non_embedding']:>11,.0f} {run['tokens']:>12,.0f} "
                 f"{run['tokens'] / run['params_total']:>6.1f} {run['fields']['train.steps']:>6d} "
                 f"{run['compute_6nd']:>10.3e} {run['compute']:>10.3e}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Running.


def run_dir_of(run: dict[str, Any]) -> str:
  return run["fields"]["train.run_dir"]


def run_status(run: dict[str, Any]) -> str:
  """finished | diverged | started | pending, from the run dir."""
  directory = run_dir_of(run)
  result = run_dir_lib.read_result(directory)
  if result is not None and result.get("step") == run["fields"]["train.steps"]:
    loss = result.get("val_loss")
    return "finished" if loss is not None and math.isfinite(loss) else "diverged"
  if (report_lib.read_json(os.path.join(directory, "sweep_status.json")) or {}).get("status") == "diverged":
    return "diverged"
  return "started" if os.path.isdir(os.path.join(directory, "checkpoints")) else "pending"


def launch_command(out_dir: str, run: dict[str, Any]) -> list[str]:
  return [sys.executable, "-m", "lm.launch", "--config", config_path(out_dir, run["name"])]


def run_local(out_dir: str, plan: dict[str, Any], only: Sequence[str] = (), log=print) -> dict[str, str]:
  """Runs the plan's unfinished runs one after another, smallest compute first; returns run name -> status.

  Progress: one line per run with its status, time and validation loss, and the sweep's share of FLOPs done
  with an ETA from the FLOP rate so far. A config error (exit status 2) stops the sweep; a run stopped by its loss
  guard is marked diverged (RUN_DIR/sweep_status.json) and the sweep goes on; another failure stops the sweep
  with the run's log named.
  """
  runs = [r for r in plan["runs"] if not only or r["name"] in only]
  missing = sorted(set(only) - {r["name"] for r in runs})
  if missing:
    raise PlanError(f"--only: no run named {', '.join(missing)} in {os.path.join(out_dir, PLAN)}")
  runs.sort(key=lambda r: r["compute"])
  total = sum(r["compute"] for r in runs)
  statuses = {r["name"]: run_status(r) for r in runs}
  done = sum(r["compute"] for r in runs if statuses[r["name"]] in ("finished", "diverged"))
  todo = [r for r in runs if statuses[r["name"]] not in ("finished", "diverged")]
  log(f"sweep {out_dir}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run "
      f"({100 * (total - done) / total:.0f}% of {total:.3g} FLOPs)")
  os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
  started = time.time()
  computed = 0.0
  for index, run in enumerate(todo, 1):
    name = run["name"]
    log_path = os.path.join(out_dir, "logs", f"{name}.log")
    verb = "resuming" if statuses[name] == "started" else "running"
    log(f"[{index}/{len(todo)}] {verb} {name}: {run['shape']['d_model']}x{run['shape']['num_layers']}, "
        f"N {short(run['params_total'])}, D {short(run['tokens'])}, {run['fields']['train.steps']} steps "
        f"(log {log_path})")
    run_start = time.time()
    with open(log_path, "a") as f:
      f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(launch_command(out_dir, run))}\n")
      f.flush()
      code = subprocess.call(launch_command(out_dir, run), stdout=f, stderr=subprocess.STDOUT)
    seconds = time.time() - run_start
    if code == CONFIG_ERROR_EXIT:
      raise PlanError(f"run {name}: config error (see {log_path}): {_last_line(log_path)}")
    if code == GUARD_STOPPED_EXIT and run_dir_lib.read_result(run_dir_of(run)) is None:
      os.makedirs(run_dir_of(run), exist_ok=True)
      run_dir_lib.write_json(os.path.join(run_dir_of(run), "sweep_status.json"),
                             {"status": "diverged", "exit_status": code, "log": log_path,
                              "reason": _last_line(log_path)})
    elif code != 0:
      raise RuntimeError(f"run {name} failed with exit status {code} after {metrics_lib.format_duration(seconds)}; "
                         f"see {log_path}: {_last_line(log_path)} (the sweep continues from it when run again)")
    statuses[name] = run_status(run)
    computed += run["compute"]
    done += run["compute"]
    rate = computed / max(time.time() - started, 1e-9)
    result = run_dir_lib.read_result(run_dir_of(run)) or {}
    loss = result.get("val_loss")
    loss_text = f"val_loss {loss:.4f}" if loss is not None else "no result"
    eta = metrics_lib.format_duration((total - done) / rate)
    log(f"[{index}/{len(todo)}] {name}: {statuses[name]} in {metrics_lib.format_duration(seconds)}, {loss_text}; "
        f"sweep {100 * done / total:.0f}% of FLOPs, {rate:.3g} FLOP/s, ETA {eta}")
  return statuses


def _last_line(path: str) -> str:
  try:
    with open(path) as f:
      lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""
  except OSError:
    return ""


def cluster_commands(out_dir: str, plan: dict[str, Any], cluster: str, launch_args: str) -> list[str]:
  """One shell command per unfinished run: launch_tpu.sh (with `launch_args`: --project, --zone, --accelerator,
  --name) or sbatch experiments/slurm_gpu.sbatch, with the base config and the run's fields as overrides (the
  cluster gets the committed code, not this directory's config files)."""
  commands = []
  for run in sorted(plan["runs"], key=lambda r: r["compute"]):
    if run_status(run) in ("finished", "diverged"):
      continue
    overrides = [f"--config.{key}={_flag_value(value)}" for key, value in run["fields"].items()
                 if key != "train.run_dir"]
    if cluster == "tpu":
      command = ["./launch_tpu.sh", *shlex.split(launch_args), "--", "--config", plan["base"],
                 f"--config.train.run_dir={run_dir_of(run)}", *overrides]
      commands.append(shlex.join(command))
    elif cluster == "slurm":
      command = ["sbatch", f"--job-name={run['name']}", *shlex.split(launch_args), "experiments/slurm_gpu.sbatch",
                 *overrides]
      commands.append(f"CONFIG={shlex.quote(plan['base'])} RUN_DIR={shlex.quote(run_dir_of(run))} "
                      + shlex.join(command))
    else:
      raise PlanError(f"--cluster must be tpu or slurm; got {cluster!r}")
  return commands


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Fitting.


@dataclasses.dataclass
class Collected:
  """The plan's runs with their outcomes: float64 [runs] arrays n, d, compute (6ND), budget (nominal; NaN in N x D
  grids), loss (NaN for diverged runs), and the names by status."""
  names: list[str]
  roles: list[str]
  n: np.ndarray
  n_non_embedding: np.ndarray
  d: np.ndarray
  compute: np.ndarray
  budget: np.ndarray
  loss: np.ndarray
  status: list[str]


def collect(plan: dict[str, Any]) -> Collected:
  names, roles, rows, status = [], [], [], []
  for run in plan["runs"]:
    state = run_status(run)
    result = run_dir_lib.read_result(run_dir_of(run)) or {}
    compute = result.get("compute") or run
    loss = result.get("val_loss") if state == "finished" else math.nan
    names.append(run["name"])
    roles.append(run["role"])
    status.append(state)
    rows.append((compute["params_total"], compute["params_non_embedding"], compute["tokens"], compute["compute_6nd"],
                 run["budget"] if run["budget"] is not None else math.nan, math.nan if loss is None else loss))
  columns = np.array(rows, dtype=np.float64).reshape(-1, 6).T
  return Collected(names, roles, *columns, status)


def _kaplan(c: Collected, grid: np.ndarray) -> dict[str, scaling.PowerLawFit]:
  """Kaplan-style power laws on the grid's envelope: L(N) from each size's lowest loss (its longest training),
  and L(C) from each budget's lowest loss (IsoFLOP grids) or L(D) from each token count's lowest loss."""
  fits = {}
  finite = grid & np.isfinite(c.loss)
  for variable, key in (("N", c.n), ("C", c.budget) if np.isfinite(c.budget[grid]).all() else ("D", c.d)):
    values = np.unique(key[finite])
    if len(values) < 2:
      continue
    best = np.array([c.loss[finite & (key == v)].min() for v in values])
    fits[f"kaplan_L({variable})"] = scaling.fit_power_law(values, best, variable=variable)
  return fits


def fit_sweep(out_dir: str, plan: dict[str, Any], *, bootstrap: int, seed: int, log=print) -> dict[str, Any]:
  """Fits the grid runs of the plan; writes DIR/fit/{fit.json, runs.tsv, *.png}; returns the JSON's content."""
  c = collect(plan)
  grid = np.array([role == "grid" for role in c.roles])
  unfinished = [name for name, state in zip(c.names, c.status) if state in ("pending", "started")]
  diverged = [name for name, state in zip(c.names, c.status) if state == "diverged"]
  if unfinished:
    log(f"left out, not finished: {', '.join(unfinished)}")
  if diverged:
    log(f"excluded, diverged: {', '.join(diverged)}")
  use = grid & np.array([state in ("finished", "diverged") for state in c.status])
  if not use.any():
    raise PlanError(f"no finished grid runs in {out_dir}: run `python -m experiments.scaling run {out_dir}` first")
  results: dict[str, Any] = {}
  isoflop = parametric = None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results.update(_kaplan(c, use))
    if np.isfinite(c.budget[use]).all():
      isoflop = scaling.fit_isoflops(c.n[use], c.d[use], c.loss[use], compute=c.budget[use], bootstrap=bootstrap,
                                     seed=seed)
      results["approach2"] = isoflop
    parametric = scaling.fit_parametric(c.n[use], c.d[use], c.loss[use], bootstrap=bootstrap, seed=seed)
    results["approach3"] = parametric
  for warning in caught:
    log(f"warning: {warning.message}")
  budgets = sorted(set(c.budget[use & np.isfinite(c.budget)].tolist()))
  holdout = ~grid
  for budget in budgets + sorted(set(c.compute[holdout].tolist())):
    results[f"allocation_{scaling.budget_name(budget)}"] = scaling.compute_optimal(parametric, budget)
  out = json.loads(scaling.to_json(results))
  predictions = []
  for i in np.flatnonzero(holdout):
    predicted = float(parametric.predict(c.n[i], c.d[i]))
    entry = {"run": c.names[i], "status": c.status[i], "n": c.n[i], "d": c.d[i], "compute_6nd": c.compute[i],
             "predicted_loss": predicted, "measured_loss": None, "relative_error": None}
    interval = parametric.predict_interval(c.n[i], c.d[i])
    if interval is not None:
      entry["predicted_interval"] = list(interval)
    if c.status[i] == "finished":
      entry["measured_loss"] = float(c.loss[i])
      entry["relative_error"] = (predicted - c.loss[i]) / c.loss[i]
    predictions.append(entry)
  out["holdout_predictions"] = predictions
  out["runs"] = {"used": [n for n, u in zip(c.names, use) if u and n not in diverged], "diverged": diverged,
                 "unfinished": unfinished}
  fit_dir = os.path.join(out_dir, "fit")
  os.makedirs(fit_dir, exist_ok=True)
  with open(os.path.join(fit_dir, "fit.json"), "w") as f:
    json.dump(out, f, indent=1)
  with open(os.path.join(fit_dir, "runs.tsv"), "w") as f:
    f.write("run\trole\tstatus\tbudget\tN\tN_non_embedding\tD\tC_6ND\tloss\n")
    for i, name in enumerate(c.names):
      f.write(f"{name}\t{c.roles[i]}\t{c.status[i]}\t{c.budget[i]:.4g}\t{c.n[i]:.0f}\t{c.n_non_embedding[i]:.0f}\t"
              f"{c.d[i]:.0f}\t{c.compute[i]:.4g}\t{c.loss[i]:.5f}\n")
  extend_to = float(c.compute[holdout].max()) if holdout.any() else None
  paths = scaling.plot(fit_dir, isoflop=isoflop, parametric=parametric, extend_to=extend_to)
  paths.append(plot_loss_curves(os.path.join(fit_dir, "loss_curves.png"), plan))
  out["plots"] = paths
  log(fit_table(out, c))
  log("wrote " + ", ".join([os.path.join(fit_dir, "fit.json"), os.path.join(fit_dir, "runs.tsv"), *paths]))
  return out


def _estimate_text(entry: dict[str, Any], fmt: str = ".3g") -> str:
  text = format(entry["value"], fmt)
  if entry.get("low") is not None:
    text += f" [{format(entry['low'], fmt)}, {format(entry['high'], fmt)}]"
  return text


def fit_table(out: dict[str, Any], c: Collected) -> str:
  lines = ["", f"{'run':<22s} {'status':<9s} {'N':>9s} {'D':>9s} {'C = 6ND':>10s} {'loss':>8s}"]
  for i, name in enumerate(c.names):
    lines.append(f"{name:<22s} {c.status[i]:<9s} {short(c.n[i]):>9s} {short(c.d[i]):>9s} {c.compute[i]:>10.3e} "
                 f"{c.loss[i]:>8.4f}")
  lines.append("")
  for key, fit in out.items():
    if key.startswith("kaplan_"):
      variable = fit["variable"]
      lines.append(f"{key}: {variable}_c = {fit[variable + '_c']:.3g}, alpha = {fit['alpha']:.3f} (r2 {fit['r2']:.3f})")
  if "approach2" in out:
    a2 = out["approach2"]
    lines.append(f"Approach 2: N_opt = {a2['G']['value']:.3g} C^{_estimate_text(a2['a'], '.3f')}, "
                 f"D_opt = {a2['G_prime']['value']:.3g} C^{_estimate_text(a2['b'], '.3f')}")
    for budget in a2["budgets"]:
      n_opt = budget["n_opt"]
      interval = f" [{short(n_opt['low'])}, {short(n_opt['high'])}]" if n_opt.get("low") is not None else ""
      lines.append(f"  {budget['name']}: N_opt {short(n_opt['value'])}{interval}, D_opt {short(budget['d_opt'])}, "
                   f"loss {budget['loss_opt']:.4f}" + (" (extrapolated)" if budget["extrapolated"] else ""))
  a3 = out["approach3"]
  level = f" ({a3['level']:.0%} bootstrap intervals)" if a3["bootstrap"]["fits"] else ""
  lines.append(f"Approach 3{level}: E {_estimate_text(a3['E'], '.3f')}, A {_estimate_text(a3['A'])}, "
               f"B {_estimate_text(a3['B'])}, alpha {_estimate_text(a3['alpha'], '.3f')}, "
               f"beta {_estimate_text(a3['beta'], '.3f')}; N_opt ~ C^{a3['a']['value']:.3f}, "
               f"D_opt ~ C^{a3['b']['value']:.3f}" + ("" if a3["converged"] else " (NOT CONVERGED)"))
  for key, allocation in out.items():
    if key.startswith("allocation_"):
      lines.append(f"  {key[len('allocation_'):]}: N_opt {short(allocation['n_opt']['value'])}, D_opt "
                   f"{short(allocation['d_opt']['value'])}, {allocation['tokens_per_parameter']['value']:.1f} tokens "
                   f"per parameter, loss {allocation['loss']['value']:.4f}")
  for p in out["holdout_predictions"]:
    measured = (f", measured {p['measured_loss']:.4f}, error {100 * p['relative_error']:+.2f}%"
                if p["measured_loss"] is not None else f" ({p['status']})")
    interval = (f" [{p['predicted_interval'][0]:.4f}, {p['predicted_interval'][1]:.4f}]"
                if "predicted_interval" in p else "")
    lines.append(f"held out {p['run']} (N {short(p['n'])}, D {short(p['d'])}, C {p['compute_6nd']:.3g}): "
                 f"predicted {p['predicted_loss']:.4f}{interval}{measured}")
  return "\n".join(lines)


def loss_curve(run: dict[str, Any], smooth: int = 20) -> tuple[np.ndarray, np.ndarray] | None:
  """(cumulative FLOPs C = 6ND, training loss smoothed over `smooth` steps) of a run's metrics.jsonl, or None."""
  path = os.path.join(run_dir_of(run), "metrics.jsonl")
  if not os.path.exists(path):
    return None
  metrics = report_lib.read_metrics(path)  # the last value of each step wins: a resumed run replays steps
  losses, flops = metrics.get("train/loss"), metrics.get("compute/flops_6nd")
  if losses is None or flops is None:
    return None
  _, at_loss, at_flops = np.intersect1d(losses[0], flops[0], return_indices=True)
  loss, flops = losses[1][at_loss], flops[1][at_flops]
  if smooth > 1 and len(loss) > smooth:
    loss = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
    flops = flops[smooth - 1:]
  return flops, loss


def plot_loss_curves(path: str, plan: dict[str, Any]) -> str:
  """Training loss against cumulative FLOPs of every run, coloured by budget (held-out runs dashed), 800x450."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  fig = Figure(figsize=scaling.FIGSIZE, dpi=scaling.DPI, layout="constrained")
  ax = fig.add_subplot()
  groups = sorted({run["budget"] or run["tokens"] for run in plan["runs"] if run["role"] == "grid"})
  colormap = matplotlib.colormaps["viridis"]
  labelled = set()
  for run in plan["runs"]:
    curve = loss_curve(run)
    if curve is None:
      continue
    key = run["budget"] or run["tokens"]
    if run["role"] == "holdout":
      color, style, label = "tab:red", "--", f"held out {run['name']}"
    else:
      color = colormap(groups.index(key) / max(len(groups) - 1, 1))
      style = "-"
      label = (scaling.budget_name(key) if run["budget"] else f"D={short(key)}") if key not in labelled else None
      labelled.add(key)
    ax.plot(curve[0], curve[1], style, color=color, linewidth=1, label=label)
  ax.set_xscale("log")
  ax.set_xlabel("compute C = 6ND so far (FLOPs)")
  ax.set_ylabel("training loss (20-step mean)")
  ax.set_title("Loss curves of the sweep's runs", fontsize=10)
  ax.grid(True, alpha=0.3, which="both")
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=scaling.DPI)
  return path


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def _list(text: str) -> list[str]:
  return [item for item in (part.strip() for part in text.split(",")) if item]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.scaling", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("plan", help="write a sweep's plan.json and one config file per run")
  p.add_argument("--base", required=True, help="the base config file every run derives from")
  p.add_argument("--out", required=True, help="the sweep directory")
  p.add_argument("--budgets", default="", help="IsoFLOP grid: compute budgets in FLOPs, comma-separated")
  p.add_argument("--tokens", default="", help="N x D grid: training tokens per run, comma-separated (1M, 2e7)")
  p.add_argument("--sizes", required=True,
                 help="model sizes, comma-separated: parameter counts (120k, 1.6M) or shapes WIDTHxDEPTH")
  p.add_argument("--aspect", type=float, default=0.0,
                 help="width / depth of the shape ladder (0: that of the base config's model)")
  p.add_argument("--warmup_fraction", type=float, default=0.1, help="warmup steps as a share of each run's steps")
  p.add_argument("--min_steps", type=int, default=20, help="refuse runs shorter than this many steps")
  p.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                 help="a config field every run sets (repeatable)")
  p.add_argument("--role", choices=ROLES, default="grid", help="holdout runs are predicted by the fits, not fitted")
  p.add_argument("--append", action="store_true", help="add these runs to the plan already in --out")
  r = sub.add_parser("run", help="run the plan's unfinished runs (or write cluster launch commands)")
  r.add_argument("dir", help="the sweep directory")
  r.add_argument("--only", default="", help="only these runs, comma-separated names")
  r.add_argument("--cluster", choices=("tpu", "slurm"), default=None,
                 help="write DIR/launch.sh with one command per unfinished run instead of running")
  r.add_argument("--launch_args", default="",
                 help="arguments for launch_tpu.sh (--project P --zone Z --accelerator T --name N) or sbatch")
  f = sub.add_parser("fit", help="fit the laws to the finished runs; write DIR/fit/")
  f.add_argument("dir", help="the sweep directory")
  f.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the intervals (0 = none)")
  f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
  args = parser.parse_args(argv)
  try:
    if args.command == "plan":
      settings = dict(parse_setting(text) for text in args.set)
      base = derive_config(args.base, settings)
      aspect = args.aspect or base.model.d_model / base.model.num_layers
      shapes = resolve_sizes(base, _list(args.sizes), aspect)
      budgets = [parse_count(x) for x in _list(args.budgets)]
      tokens = [parse_count(x) for x in _list(args.tokens)]
      runs = plan_runs(args.base, settings, shapes, budgets=budgets, tokens=tokens, out_dir=args.out,
                       warmup_fraction=args.warmup_fraction, min_steps=args.min_steps, role=args.role)
      write_plan(args.out, args.base, runs, args.append)
      print(plan_table(runs))
      print(f"planned {len(runs)} runs ({sum(r['compute'] for r in runs):.3g} FLOPs with attention) in "
            f"{os.path.join(args.out, PLAN)}; run them with `python -m experiments.scaling run {args.out}`")
    elif args.command == "run":
      plan = read_plan(args.dir)
      if args.cluster:
        commands = cluster_commands(args.dir, plan, args.cluster, args.launch_args)
        path = os.path.join(args.dir, "launch.sh")
        with open(path, "w") as out:
          out.write("#!/bin/bash\n# One launch per unfinished run of the sweep, smallest compute first.\nset -e\n")
          out.write("".join(command + "\n" for command in commands))
        os.chmod(path, 0o755)
        print(f"wrote {path}: {len(commands)} launch command(s) for {args.cluster}")
      else:
        statuses = run_local(args.dir, plan, _list(args.only))
        counts = {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))}
        print("sweep done: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    else:
      fit_sweep(args.dir, read_plan(args.dir), bootstrap=args.bootstrap, seed=args.seed)
  except (PlanError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
