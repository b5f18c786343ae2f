"""A text summary and PNG plots of a training run directory.

Usage:
  python -m lm.report RUN_DIR [--out DIR]

Reads RUN_DIR/metrics.jsonl (required), config.json, run.json, checkpoints/<step>/ and samples.txt
(all optional), prints a summary, and writes into DIR (default RUN_DIR/report/):
  summary.txt     the printed summary
  loss.png        train loss (raw and smoothed), eval loss overall and per source, skip/rollback events
  grad_norm.png   global gradient norm (and per top-level group); per-layer gradient norms
  throughput.png  tokens/s, MFU and (when logged) the learning rate
  memory.png      device or host memory, only when memory metrics were logged

metrics.jsonl holds scalar lines ({"step", "time", NAME: value, ...}) and event lines
({"step", "time", "event": KIND, ...details}). A step can be logged more than once (after a resume or
a rollback the run replays steps): the last line wins for each (metric, step). Malformed lines are
skipped and counted, never fatal, so a run that is still being written (or was killed mid-line) reports.

Exit status: 0 on success, 2 when RUN_DIR does not exist or holds no metrics.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Iterable, Sequence

import numpy as np

# Events drawn as vertical lines on the loss and gradient-norm plots (the ones that change training).
PLOTTED_EVENTS = {"skip": "tab:red", "rollback": "tab:purple"}
# At most this many events are spelled out in the summary; the rest are counted.
MAX_LISTED_EVENTS = 6
FIGSIZE = (8.0, 4.5)
DPI = 100
_LAYER = re.compile(r"^grad_norm/layer_(\d+)$")
_EVAL_SOURCE = re.compile(r"^eval/(.+)/loss$")


@dataclasses.dataclass
class Metrics:
  """The contents of one metrics.jsonl.

  scalars: name -> (steps, values): int64 [n] strictly increasing steps and float64 [n] values, the
    last logged value of each step.
  events: the event lines as logged (dicts with "step", "time", "event" and details), in file order.
  malformed: lines skipped as unreadable (bad JSON, not an object, no integer "step").
  first_malformed_line: 1-based line number of the first of them, None if there were none.
  """
  scalars: dict[str, tuple[np.ndarray, np.ndarray]]
  events: list[dict]
  malformed: int = 0
  first_malformed_line: int | None = None

  def get(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps int64 [n], values float64 [n]) of `name`, None when it was never logged."""
    return self.scalars.get(name)

  def last_step(self) -> int | None:
    steps = [int(s[-1]) for s, _ in self.scalars.values() if len(s)]
    steps += [e["step"] for e in self.events]
    return max(steps) if steps else None


def _as_step(value: Any) -> int | None:
  """The integer step of a line, None if `value` is not one (bool is not a step; 12.0 is)."""
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return None


def read_metrics(path: str) -> Metrics:
  """Parses a metrics.jsonl: last value per (metric, step), sorted by step; events; malformed lines."""
  by_name: dict[str, dict[int, float]] = {}
  events: list[dict] = []
  malformed, first_malformed = 0, None
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      step = _as_step(record.get("step")) if isinstance(record, dict) else None
      if step is None:
        malformed += 1
        first_malformed = first_malformed or number
        continue
      if "event" in record:
        events.append({**record, "step": step})
        continue
      for name, value in record.items():
        # bool is an int subclass but never a metric; non-numeric values are details, not scalars.
        if name in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
          continue
        by_name.setdefault(name, {})[step] = float(value)
  scalars = {}
  for name, values in by_name.items():
    steps = np.fromiter(values.keys(), np.int64, len(values))
    order = np.argsort(steps, kind="stable")
    scalars[name] = (steps[order], np.fromiter(values.values(), np.float64, len(values))[order])
  return Metrics(scalars=scalars, events=events, malformed=malformed, first_malformed_line=first_malformed)


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, None when it is missing or unreadable (a report never fails on these)."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def checkpoint_steps(run_dir: str) -> list[int]:
  """Steps of the checkpoints/<step>/ directories, ascending (temporary or foreign names are ignored)."""
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def last_sample(run_dir: str) -> tuple[int | None, list[str]] | None:
  """(step, lines) of the last "=== step N" block of samples.txt, None when there is none."""
  try:
    with open(os.path.join(run_dir, "samples.txt"), encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  starts = [i for i, line in enumerate(lines) if line.startswith("=== step")]
  if not starts:
    return None
  header = lines[starts[-1]].split()
  step = int(header[-1]) if header[-1].isdigit() else None
  body = lines[starts[-1] + 1:]
  while body and not body[-1].strip():
    body.pop()
  return step, body


def _finite(series: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
  """(steps [k], values [k]) of `series` without NaN/inf values; empty arrays for None."""
  if series is None:
    return np.zeros((0,), np.int64), np.zeros((0,), np.float64)
  steps, values = series
  keep = np.isfinite(values)
  return steps[keep], values[keep]


def _bytes(n: float) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.1f} {unit}"
  return f"{n:.0f} B"


def _g(x: float) -> str:
  return f"{x:.3g}" if math.isfinite(x) else str(x)


def _event_text(event: dict) -> str:
  text = f"{event.get('event')} at step {event['step']}"
  if event.get("restored_step") is not None:
    text += f" -> {event['restored_step']}"
  if event.get("batch") is not None:
    text += f" batch {event['batch']}"
  if event.get("reason"):
    text += f": {event['reason']}"
  return text


def _short_list(items: Sequence[Any], limit: int = 10) -> str:
  if len(items) <= limit:
    return ", ".join(str(i) for i in items)
  return ", ".join(str(i) for i in items[:3]) + ", ..., " + ", ".join(str(i) for i in items[-3:]) + \
      f" ({len(items)} total)"


def eval_sources(metrics: Metrics) -> list[str]:
  """Source names with an eval/<source>/loss metric, sorted."""
  return sorted(m.group(1) for name in metrics.scalars if (m := _EVAL_SOURCE.match(name)))


def layer_metrics(metrics: Metrics) -> list[tuple[int, str]]:
  """(layer index, metric name) of the grad_norm/layer_NN metrics, by depth."""
  return sorted((int(m.group(1)), name) for name in metrics.scalars if (m := _LAYER.match(name)))


def time_split(metrics: Metrics) -> dict[str, float] | None:
  """Shares of wall time: {"compute", and those logged of "data wait", "checkpoint", "eval"}, summing to 1.

  perf/step_seconds is the wall time from one step's metrics to the next's, so it holds that
  step's data wait, checkpoint save and any evaluation, sampling or noise-scale measurement
  (perf/eval_seconds); compute is what they leave. None without perf/step_seconds.
  """
  wall = float(np.sum(_finite(metrics.get("perf/step_seconds"))[1]))
  if wall <= 0:
    return None
  shares = {label: float(np.sum(_finite(metrics.get(name))[1]))
            for name, label in (("perf/data_wait_seconds", "data wait"), ("perf/checkpoint_seconds", "checkpoint"),
                                ("perf/eval_seconds", "eval")) if metrics.get(name) is not None}
  compute = max(wall - sum(shares.values()), 0.0)
  return {k: v / wall for k, v in {"compute": compute, **shares}.items()}


def _run_line(run_dir: str, run_info: dict | None) -> str:
  line = f"run: {run_dir}"
  if run_info is None:
    return line
  revision, dirty = run_info.get("git_revision"), run_info.get("git_dirty")
  if revision:
    line += f"   (git {str(revision)[:7]}" + {True: ", dirty)", False: ", clean)"}.get(dirty, ")")
  launches = run_info.get("launches")
  if isinstance(launches, list) and launches:
    resumed = [str(x["resumed_from"]) for x in launches if isinstance(x, dict) and x.get("resumed_from") is not None]
    line += f"   launches: {len(launches)}" + (f" (resumed from {', '.join(resumed)})" if resumed else "")
  return line


def _config_changes_line(run_info: dict | None) -> str | None:
  if run_info is None or not isinstance(run_info.get("launches"), list):
    return None
  changes = []
  for number, launch in enumerate(run_info["launches"], start=1):
    if not isinstance(launch, dict) or not isinstance(launch.get("config_changes"), dict):
      continue
    for key, change in launch["config_changes"].items():
      old, new = change if isinstance(change, (list, tuple)) and len(change) == 2 else (None, change)
      changes.append(f"{key} {old} -> {new} (launch {number})")
  return f"config changes: {'; '.join(changes)}" if changes else None


def _model_line(config: dict | None) -> tuple[str | None, int | None]:
  """(the model line, tokens per step) from config.json; (None, None) without one."""
  if config is None:
    return None, None
  model, data, train = (config.get(k) if isinstance(config.get(k), dict) else {} for k in ("model", "data", "train"))
  shape = [f"{label}{model[key]}{suffix}" for key, label, suffix in
           (("d_model", "d_model ", ""), ("num_layers", "", " layers"), ("vocab_size", "vocab ", "")) if key in model]
  if model.get("num_experts"):
    shape.append(f"{model['num_experts']} experts (top {model.get('experts_per_token')})")
  parts = [", ".join(shape)] if shape else []
  seq_len, batch = data.get("seq_len"), train.get("global_batch_size")
  tokens_per_step = None
  if isinstance(seq_len, int) and isinstance(batch, int):
    tokens_per_step = seq_len * batch
    parts.append(f"seq_len {seq_len}, batch {batch} ({tokens_per_step:,} tokens/step)")
  return ("model: " + "; ".join(parts) if parts else None), tokens_per_step


def summarize(run_dir: str, *, metrics: Metrics | None = None, plots: Sequence[str] = ()) -> str:
  """The text summary of `run_dir` (one line per aspect that has data); `plots` are listed at the end.

  `metrics` saves re-reading metrics.jsonl when the caller already has it.
  """
  if metrics is None:
    metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  config = read_json(os.path.join(run_dir, "config.json"))
  run_info = read_json(os.path.join(run_dir, "run.json"))
  lines = [_run_line(run_dir, run_info)]
  model_line, tokens_per_step = _model_line(config)
  lines.append(model_line)
  lines.append(_config_changes_line(run_info))

  last_step = metrics.last_step()
  if last_step is not None:
    train = config.get("train") if config else None
    total = train.get("steps") if isinstance(train, dict) else None
    line = f"progress: step {last_step}" + (f" / {total}" if total is not None else "")
    if tokens_per_step:
      line += f", {last_step * tokens_per_step:,} tokens"
    lines.append(line)

  if metrics.get("train/loss") is not None:
    # Raw first/last, so a run that ended in NaN says so; the mean is over finite values only.
    loss = metrics.get("train/loss")[1]
    tail = loss[-10:][np.isfinite(loss[-10:])]
    line = f"train loss: first {loss[0]:.3f}, last {loss[-1]:.3f}"
    if len(tail):
      line += f" (mean of last {len(tail)} logged steps {np.mean(tail):.3f})"
    nonfinite = int(np.sum(~np.isfinite(loss)))
    lines.append(line + (f"; {nonfinite} non-finite" if nonfinite else ""))

  steps, loss = _finite(metrics.get("eval/loss"))
  sources = [(s, _finite(metrics.get(f"eval/{s}/loss"))[1]) for s in eval_sources(metrics)]
  sources = [f"{s} {v[-1]:.4f}" for s, v in sources if len(v)]
  if len(loss) or sources:
    parts = []
    if len(loss):
      best = int(np.argmin(loss))
      parts.append(f"last {loss[-1]:.4f} at step {steps[-1]} (best {loss[best]:.4f} at step {steps[best]})")
    lines.append("eval loss: " + "; ".join(parts + ([", ".join(sources)] if sources else [])))

  throughput = []
  tokens_per_second = _finite(metrics.get("perf/tokens_per_second"))[1]
  if len(tokens_per_second):
    throughput.append(f"median {np.median(tokens_per_second):,.0f} tokens/s")
  mfu = _finite(metrics.get("perf/mfu"))[1]
  if len(mfu):
    throughput.append(f"MFU median {100 * np.median(mfu):.1f}%")
  split = time_split(metrics)
  line = "throughput: " + ", ".join(throughput) if throughput else None
  if split:
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in split.items())
    line = (line + "; time: " if line else "time: ") + shares
  lines.append(line)
  launches = (run_info or {}).get("launches")
  basis = launches[-1].get("mfu_basis") if isinstance(launches, list) and launches and isinstance(
      launches[-1], dict) else None
  if isinstance(basis, dict) and basis.get("flops_per_token") and basis.get("peak_flops_per_device"):
    lines.append(f"MFU basis: {basis['flops_per_token'] / 1e6:.1f} MFLOP/token ({basis.get('formula', '?')}) against "
                 f"{basis['peak_flops_per_device'] / 1e9:,.0f} GFLOP/s per device ({basis.get('peak_source', '?')})")

  memory = []
  device = _finite(metrics.get("memory/peak_bytes_in_use"))[1]
  device = device if len(device) else _finite(metrics.get("memory/bytes_in_use"))[1]
  host = _finite(metrics.get("memory/host_peak_rss_bytes"))[1]
  host = host if len(host) else _finite(metrics.get("memory/host_rss_bytes"))[1]
  if len(device):
    memory.append(f"peak {_bytes(device.max())} (device)")
  if len(host):
    memory.append(f"peak {_bytes(host.max())} (host RSS)" if not memory else f"host RSS peak {_bytes(host.max())}")
  lines.append("memory: " + ", ".join(memory) if memory else None)

  steps, grad_norm = _finite(metrics.get("train/grad_norm"))
  if len(grad_norm):
    top = int(np.argmax(grad_norm))
    lines.append(f"grad norm: last {_g(grad_norm[-1])}, max {_g(grad_norm[top])} at step {steps[top]}")
  ratio = _finite(metrics.get("train/update_ratio"))[1]
  if len(ratio):
    lines.append(f"update ratio: last {ratio[-1]:.2e}, median {np.median(ratio):.2e}")
  noise = _finite(metrics.get("train/gradient_noise_scale"))
  if len(noise[1]):
    lines.append(f"gradient noise scale: last {noise[1][-1]:,.0f} at step {noise[0][-1]}")

  shares = []
  for name in sorted(n for n in metrics.scalars if n.startswith("data/") and n.endswith("/share")):
    source = name[len("data/"):-len("/share")]
    share, epochs = _finite(metrics.get(name))[1], _finite(metrics.get(f"data/{source}/epochs"))[1]
    if len(share):
      shares.append(f"{source} {share[-1]:.2f}" + (f" ({epochs[-1]:.2f} epochs)" if len(epochs) else ""))
  lines.append("data share: " + ", ".join(shares) if shares else None)

  if metrics.events:
    events = metrics.events
    counts: dict[str, int] = {}
    for event in events:
      counts[str(event.get("event"))] = counts.get(str(event.get("event")), 0) + 1
    listed = "; ".join(_event_text(e) for e in events[:MAX_LISTED_EVENTS])
    if len(events) > MAX_LISTED_EVENTS:
      by_kind = ", ".join(f"{k} {n}" for k, n in counts.items())
      lines.append(f"events: {len(events)} ({by_kind}): {listed}; ... {len(events) - MAX_LISTED_EVENTS} more")
    else:
      lines.append(f"events: {len(events)} ({listed})")

  checkpoints = checkpoint_steps(run_dir)
  if checkpoints:
    lines.append(f"checkpoints: {_short_list(checkpoints)}")
  if metrics.malformed:
    lines.append(f"metrics.jsonl: {metrics.malformed} malformed line{'s' if metrics.malformed > 1 else ''} "
                 f"skipped (first at line {metrics.first_malformed_line})")
  sample = last_sample(run_dir)
  if sample is not None:
    step, body = sample
    lines.append(f"sample (step {step}):" if step is not None else "sample:")
    lines.extend(("  " + line[:116]).rstrip() for line in body[:5])
  if plots:
    lines.append(f"plots: {', '.join(plots)}")
  return "\n".join(line for line in lines if line is not None)


# ---------------------------------------------------------------------------------------------- plots


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over `window` points: float [n] -> float [n - window + 1] (aligned to the window's end)."""
  window = max(1, min(window, len(values)))
  cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
  return (cumulative[window:] - cumulative[:-window]) / window


def _no_data(ax, title: str) -> None:
  ax.set_title(title)
  ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray", fontsize=12)
  ax.set_xticks([])
  ax.set_yticks([])


def _draw_events(ax, events: Iterable[dict], label: bool = True) -> None:
  """Dashed vertical lines at the skip/rollback steps; text labels only while they stay legible."""
  events = [e for e in events if e.get("event") in PLOTTED_EVENTS]
  seen = set()
  for event in events:
    kind = event["event"]
    ax.axvline(event["step"], color=PLOTTED_EVENTS[kind], linestyle="--", linewidth=0.8, alpha=0.7,
               label=kind if kind not in seen else None)
    seen.add(kind)
    if label and len(events) <= 12:
      text = kind + (f" -> {event['restored_step']}" if event.get("restored_step") is not None else "")
      ax.text(event["step"], 0.98, text, transform=ax.get_xaxis_transform(), rotation=90, fontsize=7,
              ha="right", va="top", color=PLOTTED_EVENTS[kind])


def _line(ax, series: tuple[np.ndarray, np.ndarray], **kwargs) -> None:
  steps, values = series
  if len(steps) == 1:
    kwargs.setdefault("marker", "o")  # a single point draws no line
  ax.plot(steps, values, **kwargs)


def _plot_loss(fig, metrics: Metrics) -> None:
  ax = fig.add_subplot(1, 1, 1)
  train = metrics.get("train/loss")
  evals = [("eval/loss", "eval")] + [(f"eval/{s}/loss", f"eval {s}") for s in eval_sources(metrics)]
  evals = [(name, label) for name, label in evals if metrics.get(name) is not None]
  if train is None and not evals:
    _no_data(ax, "loss")
    return
  if train is not None:
    steps, values = _finite(train)
    window = max(1, len(values) // 50)
    smoothed = len(values) > window > 1
    # The raw curve stays faint only when the smoothed one carries the trend.
    _line(ax, train, color="tab:blue", linewidth=0.6 if smoothed else 1.2, alpha=0.45 if smoothed else 1.0,
          label="train")
    if smoothed:
      ax.plot(steps[window - 1:], moving_average(values, window), color="tab:blue", linewidth=1.6,
              label=f"train (mean of {window})")
  for i, (name, label) in enumerate(evals):
    ax.plot(*metrics.get(name), marker="o", markersize=3.5, linewidth=1.2, label=label,
            color="black" if name == "eval/loss" else f"C{i + 1}")
  _draw_events(ax, metrics.events)
  ax.set_title("loss")
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats/token)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc="upper right")


def _plot_grad_norm(fig, metrics: Metrics) -> None:
  left, right = fig.subplots(1, 2)
  steps, values = _finite(metrics.get("train/grad_norm"))
  groups = sorted(n for n in metrics.scalars if n.startswith("grad_norm/") and not _LAYER.match(n))
  if not len(values[values > 0]):
    _no_data(left, "global gradient norm")
  else:
    _line(left, (steps[values > 0], values[values > 0]), color="black", linewidth=0.9, label="global")
    for i, name in enumerate(groups[:8]):
      s, v = _finite(metrics.get(name))
      _line(left, (s[v > 0], v[v > 0]), linewidth=0.7, alpha=0.8, color=f"C{i}", label=name[len("grad_norm/"):])
    _draw_events(left, metrics.events, label=False)
    left.set_yscale("log")
    left.set_title("global gradient norm")
    left.set_xlabel("step")
    left.set_ylabel("L2 norm (before clipping)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)

  layers = layer_metrics(metrics)
  if not layers:
    _no_data(right, "per-layer gradient norm")
  else:
    import matplotlib  # pylint: disable=import-outside-toplevel
    colormap = matplotlib.colormaps["viridis"]
    every = math.ceil(len(layers) / 8)  # keeps the legend at <= 8 entries
    for i, (index, name) in enumerate(layers):
      s, v = _finite(metrics.get(name))
      _line(right, (s[v > 0], v[v > 0]), linewidth=0.8, color=colormap(i / max(len(layers) - 1, 1)),
            label=f"layer {index}" if i % every == 0 else None)
    right.set_yscale("log")
    right.set_title("per-layer gradient norm")
    right.set_xlabel("step")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, title="shallow -> deep", title_fontsize=7)


def _median_panel(ax, series: tuple[np.ndarray, np.ndarray], scale: float, color: str, label: str,
                  median_format: str, title: str, ylabel: str) -> None:
  """One per-step series (steps [n], values [n]) times `scale`, with its median as a dashed line."""
  steps, values = series
  if not len(values):
    _no_data(ax, label)
    return
  _line(ax, (steps, scale * values), color=color, linewidth=0.9, label=label)
  median = scale * float(np.median(values))
  ax.axhline(median, color=color, linestyle="--", linewidth=1.0, label=f"median {median_format.format(median)}")
  ax.set_title(title)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  ax.grid(True, alpha=0.3)


def _plot_throughput(fig, metrics: Metrics) -> None:
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  learning_rate = metrics.get("train/learning_rate")
  axes = fig.subplots(1, 3 if learning_rate is not None else 2)
  _median_panel(axes[0], _finite(metrics.get("perf/tokens_per_second")), 1.0, "tab:green", "tokens/s", "{:,.0f}",
                "tokens/s", "tokens per second")
  _median_panel(axes[1], _finite(metrics.get("perf/mfu")), 100.0, "tab:orange", "MFU", "{:.1f}%",
                "model FLOPs utilisation", "MFU (%)")
  if learning_rate is not None:
    _line(axes[2], learning_rate, color="tab:purple", linewidth=1.0, label="learning rate")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("learning rate")
    # Plain tick labels: matplotlib's "1e-3" offset text would sit on top of the panel title.
    axes[2].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:.2g}"))
    axes[2].grid(True, alpha=0.3)


MEMORY_METRICS = ("memory/bytes_in_use", "memory/peak_bytes_in_use", "memory/host_rss_bytes",
                  "memory/host_peak_rss_bytes")


def _plot_memory(fig, metrics: Metrics) -> None:
  ax = fig.add_subplot(1, 1, 1)
  for name in MEMORY_METRICS:
    if metrics.get(name) is not None:
      steps, values = metrics.get(name)
      _line(ax, (steps, values / 2**30), linewidth=1.0, label=name[len("memory/"):])
  ax.set_title("memory")
  ax.set_xlabel("step")
  ax.set_ylabel("GiB")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)


def plot(run_dir: str, out_dir: str, *, metrics: Metrics | None = None) -> list[str]:
  """Writes loss.png, grad_norm.png, throughput.png (always; "no data" panels where a metric is missing)
  and memory.png (only with memory metrics) into `out_dir`, each 800x450 pixels; returns their paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  if metrics is None:
    metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  os.makedirs(out_dir, exist_ok=True)
  plots = [("loss.png", _plot_loss), ("grad_norm.png", _plot_grad_norm), ("throughput.png", _plot_throughput)]
  if any(metrics.get(name) is not None for name in MEMORY_METRICS):
    plots.append(("memory.png", _plot_memory))
  written = []
  for filename, draw in plots:
    # A bare Figure (not pyplot) keeps no global state, so nothing leaks when plot() is called repeatedly.
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    draw(fig, metrics)
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=DPI)
    written.append(path)
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lm.report", description=__doc__.split("\n\n")[0])
  parser.add_argument("run_dir", metavar="RUN_DIR", help="the training run directory")
  parser.add_argument("--out", metavar="DIR", default=None, help="where to write the report (default RUN_DIR/report)")
  args = parser.parse_args(argv)
  run_dir = args.run_dir
  if not os.path.isdir(run_dir):
    problem = "not a directory" if os.path.exists(run_dir) else "run directory not found"
    print(f"error: {problem}: {run_dir}", file=sys.stderr)
    return 2
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(metrics_path):
    print(f"error: no metrics.jsonl in {run_dir}", file=sys.stderr)
    return 2
  out_dir = args.out or os.path.join(run_dir, "report")
  metrics = read_metrics(metrics_path)
  try:
    plots = plot(run_dir, out_dir, metrics=metrics)
    summary = summarize(run_dir, metrics=metrics, plots=plots)
    with open(os.path.join(out_dir, "summary.txt"), "w", encoding="utf-8") as f:
      f.write(summary + "\n")
  except OSError as e:
    print(f"error: cannot write the report to {out_dir}: {e}", file=sys.stderr)
    return 1
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
