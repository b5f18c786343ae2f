"""Training-step benchmark: our train step and a PyTorch peer of the same model, side by side in one run.

    python -m experiments.bench_train [--configs bench_5m,bench_29m] [--steps 5] [--warmup 2]
        [--peers eager,compile] [--ablate model.unroll_layers=False,...] [--compile_depths 4,32]
        [--profile DIR] [--set model.FIELD=VALUE ...]

For each config (a name in configs/ or a path) it times `lm.train.build(config).train_step` on a
fixed random batch (one document per row) and, where torch is installed, the same model written
in PyTorch (`experiments/torch_reference.py`, eager and torch.compile). Each time is the median of
`--steps` steps after `--warmup` steps. The table gives tokens/s, step time, model FLOPs per step,
their share of the peak and our tokens/s as a multiple of each row's.

FLOPs per step are `lm.params.flops_per_token` times the step's tokens: 6N for the weight matmuls
(N = every weight a token is multiplied by, the output projection included; biases, norms and
softmax not counted) plus 12 * keys * heads * head_dim per layer for attention, with a causal row
counting (seq_len + 1) / 2 keys per query (the half the mask leaves). The same count is the MFU of
training runs. The peak is measured in this run as the training loop measures it (a 2048 x 2048
float32 matmul on CPU, `lm.metrics.peak_flops_per_device`), or the chip's table value on GPU / TPU.

`--ablate` adds a row per setting with that one optimisation undone (and one with all of them
undone), which is what each bought. `--compile_depths` reports the compile time of the first
config at those depths with scanned layers (`model.unroll_layers=False`) and unrolled.
`--profile DIR` traces a few of our steps of the first config into DIR (open it with TensorBoard
or Perfetto) and prints where the time goes: the XLA ops of the trace, grouped by what they compute.

Like `lm.launch`, the benchmark restarts itself once under the host allocator of the first config
(`train.host_allocator`, lm/process.py), so both implementations run under it.

torch is a benchmark-only dependency (`pip install torch==2.13.0`): without it our rows are
printed and the peers are reported as skipped. On GPU the peer runs on CUDA in bfloat16 when that
torch build has CUDA, and is skipped otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from experiments import scaling as scaling_cli
from experiments import torch_reference
from lm import config as config_lib
from lm import layers
from lm import metrics as metrics_lib
from lm import params as params_lib
from lm import process
from lm import sharding
from lm import train

DEFAULT_ABLATIONS = ("train.cpu_dot_library=ynnpack", "model.unroll_layers=False", "model.attention_query_chunk=0")

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["bench_5m", "bench_29m"], "configs to measure: names in configs/ or paths to .py files")
flags.DEFINE_integer("steps", 5, "timed steps per row (the median is reported)")
flags.DEFINE_integer("warmup", 2, "untimed steps before them (the first compiles)")
flags.DEFINE_list("peers", ["eager", "compile"], "PyTorch peers to run: eager, compile (empty: none)")
flags.DEFINE_list("ablate", [], "settings GROUP.FIELD=VALUE that each undo one optimisation: one extra row each, and "
                  "one with all of them ('default' = " + ",".join(DEFAULT_ABLATIONS) + ")")
flags.DEFINE_list("compile_depths", [], "num_layers values whose compile time is reported for the first config")
flags.DEFINE_string("profile", "", "trace our steps of the first config into this directory and break the time down")
flags.DEFINE_multi_string("set", [], "GROUP.FIELD=VALUE applied to every config (a Python literal or a string)")


@dataclasses.dataclass
class Row:
  config: str  # config name
  implementation: str  # "ours", "ours, SETTING" (an ablation), "PyTorch eager", "PyTorch compile"
  step_seconds: float | None  # median over the timed steps; None when skipped
  tokens_per_step: int
  flops_per_step: float
  first_step_seconds: float | None = None  # compile (and, for torch.compile, graph capture) plus one step
  first_loss: float | None = None  # loss of the first step (before any update): the peers agree at init
  note: str = ""  # why the row was skipped

  @property
  def tokens_per_second(self) -> float | None:
    return None if self.step_seconds is None else self.tokens_per_step / self.step_seconds


def load_config(name: str, settings: Sequence[str] = (), validate: bool = True) -> ml_collections.ConfigDict:
  """configs/NAME.py (or the file at NAME) with GROUP.FIELD=VALUE `settings` applied, validated for this host."""
  path = name if name.endswith(".py") else os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                         f"{name}.py"))
  try:
    config = scaling_cli.load_config_file(path)
    for setting in settings:
      scaling_cli.set_field(config, *scaling_cli.parse_setting(setting))
  except scaling_cli.PlanError as e:
    raise config_lib.ConfigError(f"config {name}: {e}") from None
  if validate:
    config = config_lib.for_platform(config, jax.default_backend())
    config_lib.validate(config, jax.device_count(), jax.process_count())
  return config


def config_label(name: str) -> str:
  """The name a config is shown under: its name in configs/, or a path's file name without .py."""
  return os.path.splitext(os.path.basename(name))[0]


def synthetic_tokens(config: ml_collections.ConfigDict, seed: int = 0) -> np.ndarray:
  """[global_batch_size, seq_len + 1] int32 random ordinary tokens: one document per row, shifted for targets."""
  shape = (config.train.global_batch_size, config.data.seq_len + 1)
  return np.random.default_rng(seed).integers(4, config.model.vocab_size, shape, dtype=np.int32)


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """The loader's batch layout of `synthetic_tokens`."""
  tokens = synthetic_tokens(config, seed)
  batch, seq = tokens.shape[0], tokens.shape[1] - 1
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((batch, seq), np.int32),
          "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1)), "loss_mask": np.ones((batch, seq), np.int32)}


def flops_per_step(config: ml_collections.ConfigDict) -> float:
  tokens = config.train.global_batch_size * config.data.seq_len
  return params_lib.flops_per_token(config.model, config.data.seq_len)["total"] * tokens


class OurStep:
  """Our train step of `config` on all local devices, with its state and a fixed device batch."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh)
    self.trainer = train.build(config, self.mesh)
    self.state = self.trainer.init_state(jax.random.PRNGKey(config.train.seed))
    self.batch = sharding.global_batch(synthetic_batch(config), self.trainer.batch_sharding)

  def __call__(self, executable: Callable | None = None) -> float:
    """One step (of `executable`, a `compiled()` of the step, if given); returns its loss (a host read, so
    the step has finished)."""
    self.state, metrics = (executable or self.trainer.train_step)(self.state, self.batch)
    return float(metrics["train/loss"])

  def compiled(self):
    return self.trainer.train_step.lower(self.state, self.batch).compile()

  def compiled_text(self) -> str:
    return self.compiled().as_text()


def peer_device() -> tuple[str | None, str]:
  """(torch device for the peer, or None with the reason it is skipped)."""
  if not torch_reference.available():
    return None, "torch is not installed (pip install torch==2.13.0)"
  backend = jax.default_backend()
  if backend == "cpu":
    return "cpu", ""
  import torch
  if backend == "gpu" and torch.cuda.is_available():
    return "cuda", ""
  return None, f"this torch build cannot run on {backend} (it has no CUDA)"


def peer_step(config: ml_collections.ConfigDict, mode: str) -> tuple[Callable[[], float] | None, str]:
  """(the PyTorch peer's step for `config` in `mode` eager | compile, or None and why it is skipped)."""
  device, why = peer_device()
  if device is None:
    return None, why
  try:
    torch_reference.check_supported(config.model)
  except torch_reference.Unsupported as e:
    return None, str(e)
  bfloat16 = layers.compute_dtype_name(config.model.compute_dtype) == "bfloat16"
  return torch_reference.TorchStep(config.model, config.optim, synthetic_tokens(config), compile_model=mode == "compile",
                                   device=device, bfloat16=bfloat16), ""


def measure(steps: dict[str, Callable[[], float]], rounds: int, warmup: int,
            log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
  """Times each named step function: the first call alone (compilation), `warmup` - 1 more, then `rounds`
  rounds in which each takes its turn, so that a slower or faster spell of the machine falls on all of
  them alike. A turn is an untimed step and a timed one: the untimed step absorbs the switch from the
  previous implementation (whose idle worker threads spin on the cores for a while after it returns).
  {name: {"first_seconds", "first_loss", "median_seconds", "seconds"}}."""
  results = {}
  for name, step in steps.items():
    log(f"  compiling and warming up: {name}")
    start = time.perf_counter()
    loss = step()
    results[name] = {"first_seconds": time.perf_counter() - start, "first_loss": loss, "seconds": []}
    for _ in range(max(warmup - 1, 0)):
      step()
  for _ in range(rounds):
    for name, step in steps.items():
      if len(steps) > 1:
        step()
      start = time.perf_counter()
      step()
      results[name]["seconds"].append(time.perf_counter() - start)
  for result in results.values():
    result["median_seconds"] = statistics.median(result["seconds"])
  return results


def compile_seconds(config: ml_collections.ConfigDict) -> float:
  """Seconds to lower and compile the train step of `config` (nothing is run)."""
  trainer = train.build(config, sharding.make_mesh(config.mesh))
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding)
                    for k, v in synthetic_batch(config).items()}
  start = time.perf_counter()
  trainer.train_step.lower(trainer.abstract_state, abstract_batch).compile()
  return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# Where the time goes.

PROJECTION = r"ti,io->to|ti,oi->to"  # `lm.layers.matmul`: every weight matmul of the dense model


def op_category(op_name: str) -> str:
  """The part of the step an XLA op's `op_name` metadata belongs to (its JAX name stack)."""
  if "transpose(" in op_name:
    stage = "backward"
  elif "jvp(" in op_name:
    stage = "forward"
  else:
    return "optimizer update, guard and metrics"
  if "/attention/" in op_name:
    if re.search(PROJECTION, op_name):
      return f"matmul: attention projections ({stage})"
    return f"attention: logits, mask, softmax, weighted sum ({stage})"
  if "/mlp/" in op_name or "/moe/" in op_name:
    # A weight gradient's dot is named by the einsum's transpose rule ("ti,io->to/transpose"), not dot_general.
    matmul = "dot_general" in op_name or re.search(PROJECTION, op_name)
    return f"matmul: MLP ({stage})" if matmul else f"MLP activation ({stage})"
  if re.search(PROJECTION, op_name):
    return f"matmul: output logits ({stage})"
  if "_norm" in op_name:
    return f"norms ({stage})"
  if "embed" in op_name:
    return f"embedding gather / scatter ({stage})"
  if "Transformer" not in op_name:
    return f"softmax cross-entropy ({stage})"
  if "dynamic_slice" in op_name or "dynamic_update_slice" in op_name or "/while/" in op_name:
    return f"scan: per-layer slicing and stacking ({stage})"
  return f"residual adds and other elementwise ({stage})"


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its op_name metadata, for every instruction of a compiled HLO module's text."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if match:
      op = re.search(r'op_name="([^"]*)"', line)
      names[match.group(1)] = op.group(1) if op else ""
  return names


def trace_events(trace_dir: str) -> list[dict]:
  """The complete ("X") events of the newest Perfetto trace under `trace_dir`."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  return [e for e in events if e.get("ph") == "X"]


def profile(step: OurStep, trace_dir: str, steps: int = 2) -> tuple[list[tuple[str, float, float]], float]:
  """Traces `steps` steps (after one warm-up); ([(category, ms per step, share of op time)], wall ms per step).

  Op time is the sum of each XLA op's duration; ops that run side by side on different cores both
  count, so it can exceed the wall time. The shares say where the work is.
  """
  # The traced steps run the very executable whose HLO names the ops: a second compilation may number its
  # instructions differently (oneDNN's fusions do).
  executable = step.compiled()
  names = op_names(executable.as_text())
  step(executable)
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  for _ in range(steps):
    step(executable)
  wall = (time.perf_counter() - start) / steps * 1e3
  jax.profiler.stop_trace()
  totals = collections.Counter()
  for event in trace_events(trace_dir):
    base = event["name"].split(":")[0]  # GPU kernels may carry a suffix after the HLO name
    if base in names:
      totals[op_category(names[base])] += event["dur"] / 1e3 / steps
  whole = sum(totals.values()) or 1.0
  return [(name, ms, ms / whole) for name, ms in totals.most_common()], wall


# ----------------------------------------------------------------------------------------------------------------
# Output.

def format_table(rows: list[Row], peak: float) -> str:
  ours = {r.config: r for r in rows if r.implementation == "ours" and r.step_seconds}
  header = (f"{'config':<11} {'implementation':<44} {'tokens/s':>9} {'step ms':>9} {'GFLOP/step':>11} "
            f"{'% of peak':>9} {'ours / this':>11} {'compile+1 s':>11} {'loss 1':>7}")
  lines = [header, "-" * len(header)]
  for r in rows:
    if r.step_seconds is None:
      lines.append(f"{r.config:<11} {r.implementation:<44} {r.note}")
      continue
    share = r.flops_per_step / r.step_seconds / peak
    ratio = ours[r.config].tokens_per_second / r.tokens_per_second if r.config in ours else float("nan")
    lines.append(f"{r.config:<11} {r.implementation:<44} {r.tokens_per_second:>9,.0f} {r.step_seconds * 1e3:>9.0f} "
                 f"{r.flops_per_step / 1e9:>11.1f} {share:>9.1%} {ratio:>10.2f}x "
                 f"{r.first_step_seconds:>11.1f} {r.first_loss:>7.3f}")
  return "\n".join(lines)


def run(config_names: Sequence[str], steps: int, warmup: int, peers: Sequence[str], ablations: Sequence[str] = (),
        settings: Sequence[str] = (), log: Callable[[str], None] = print) -> tuple[list[Row], float, str]:
  """Measures every row; (rows, peak FLOP/s of all devices, where the peak came from)."""
  for mode in peers:
    if mode not in ("eager", "compile"):
      raise config_lib.ConfigError(f"--peers: unknown peer {mode!r}; expected eager or compile")
  configs = {name: load_config(name, settings) for name in config_names}
  label_of = {name: config_label(name) for name in config_names}
  peak, source = metrics_lib.peak_flops_per_device(next(iter(configs.values())).log)
  peak *= jax.device_count()
  log(f"peak: {peak / 1e9:,.0f} GFLOP/s ({source}; {jax.device_count()} {jax.default_backend()} device(s))")
  rows = []
  for name, config in configs.items():
    log(f"{label_of[name]}:")
    tokens, flops = config.train.global_batch_size * config.data.seq_len, flops_per_step(config)
    variants = {"ours": config}
    for setting in ablations:
      variants[f"ours, {setting}"] = load_config(name, list(settings) + [setting])
    if len(ablations) > 1:
      variants["ours, all of the above"] = load_config(name, list(settings) + list(ablations))
    step_functions = {label: OurStep(variant) for label, variant in variants.items()}
    skipped = {}
    for mode in peers:
      step, why = peer_step(config, mode)
      if step is None:
        skipped[f"PyTorch {mode}"] = f"skipped: {why}"
      else:
        step_functions[f"PyTorch {mode}"] = step
    results = measure(step_functions, steps, warmup, log)
    for label, result in results.items():
      rows.append(Row(label_of[name], label, result["median_seconds"], tokens, flops, first_step_seconds=result["first_seconds"],
                      first_loss=result["first_loss"]))
    rows.extend(Row(label_of[name], label, None, tokens, flops, note=note) for label, note in skipped.items())
  return rows, peak, source


def main(argv: Sequence[str]) -> None:
  try:
    _main(argv)
  except config_lib.ConfigError as e:  # a bad config name, key or value: named, without a traceback
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)


def _main(argv: Sequence[str]) -> None:
  del argv
  # The allocator the training loop runs under (lm.launch does the same), before JAX starts.
  process.apply_host_allocator(load_config(FLAGS.configs[0], FLAGS.set, validate=False).train.host_allocator)
  ablations = list(DEFAULT_ABLATIONS) if FLAGS.ablate == ["default"] else FLAGS.ablate
  peers = [p for p in FLAGS.peers if p]
  log = lambda line: print(line, flush=True)  # noqa: E731
  rows, peak, source = run(FLAGS.configs, FLAGS.steps, FLAGS.warmup, peers, ablations, FLAGS.set, log)
  print()
  print(f"Training step, median of {FLAGS.steps} steps after {FLAGS.warmup} warm-up (the rows' steps taken in turn), "
        f"on {jax.device_count()} "
        f"{jax.devices()[0].device_kind} device(s); peak {peak / 1e9:,.0f} GFLOP/s ({source})")
  print("FLOPs/step = tokens x (6N + 12 x keys x heads x head_dim per layer), causal keys = (seq_len + 1) / 2")
  print(format_table(rows, peak))
  if FLAGS.compile_depths:
    name = FLAGS.configs[0]
    print()
    print(f"Compile time of {config_label(name)}'s train step by depth (lower + compile, nothing run):")
    print(f"{'num_layers':>10} {'scanned s':>10} {'unrolled s':>11}")
    for depth in FLAGS.compile_depths:
      cells = []
      for unroll in (False, True):
        config = load_config(name, list(FLAGS.set) + [f"model.num_layers={int(depth)}",
                                                      f"model.unroll_layers={unroll}"])
        cells.append(compile_seconds(config))
      print(f"{int(depth):>10} {cells[0]:>10.1f} {cells[1]:>11.1f}")
  if FLAGS.profile:
    name = FLAGS.configs[0]
    breakdown, wall = profile(OurStep(load_config(name, FLAGS.set)), FLAGS.profile)
    print()
    print(f"Where {config_label(name)}'s step time goes (trace in {FLAGS.profile}; wall {wall:,.0f} ms/step; op time may exceed it "
          "where ops overlap):")
    for category, ms, share in breakdown:
      print(f"  {category:<58} {ms:>9,.0f} ms {share:>7.1%}")


if __name__ == "__main__":
  app.run(main)
