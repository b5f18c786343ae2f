"""Metric writers (tensorboardX + metrics.jsonl), FLOP counting, MFU and the progress line."""

from __future__ import annotations

import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import params as params_lib

# Dense peak FLOP/s per device at the usual training precision (bf16 on accelerators).
KNOWN_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def flops_per_token(model_config: ml_collections.ConfigDict, seq_len: int) -> float:
  """Training FLOPs per token for MFU: 6N + attention, as `lm.params.flops_per_token` counts them.

  N is every weight a token is multiplied by (for MoE layers the active experts and the router;
  the output projection, tied or not; not the embedding lookup). Attention is 12 * keys * heads
  * head_dim per layer for QK^T and AV, with keys the average a query sees: about half of
  seq_len for causal global layers, about the window for local ones.
  """
  return params_lib.flops_per_token(model_config, seq_len)["total"]


def measure_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a float32 [size, size] matmul on the default device (best of `repeats`)."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def peak_flops_per_device(log_config: ml_collections.ConfigDict) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number came from) for MFU."""
  if log_config.peak_flops_per_device > 0:
    return log_config.peak_flops_per_device, "config log.peak_flops_per_device"
  kind = jax.devices()[0].device_kind
  if kind in KNOWN_PEAK_FLOPS:
    return KNOWN_PEAK_FLOPS[kind], f"table entry for {kind}"
  return measure_matmul_flops(), f"measured 2048x2048 float32 matmul on {kind}"


def memory_scalars() -> dict[str, float]:
  """Memory in use and its peak: of the busiest local device where the backend reports it (GPU, TPU),
  else of this process's host memory (CPU devices live in it)."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  if stats and all(stats):
    return {"memory/bytes_in_use": float(max(s.get("bytes_in_use", 0) for s in stats)),
            "memory/peak_bytes_in_use": float(max(s.get("peak_bytes_in_use", 0) for s in stats))}
  scalars = {"memory/host_peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
  try:
    with open("/proc/self/statm") as f:
      scalars["memory/host_rss_bytes"] = float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):  # not Linux: the peak is still known
    pass
  return scalars


class GradientNoiseScale:
  """The simple gradient noise scale B = tr(Sigma) / |G|^2 (McCandlish et al., 2018, appendix A), in tokens.

  Each measurement gives |g|^2 at two batch sizes (two halves of a batch, and the whole);
  unbiased estimates of |G|^2 and tr(Sigma) follow, and each is smoothed by an exponential
  moving average before their ratio is taken, as a single measurement is very noisy.
  """

  def __init__(self, decay: float = 0.9):
    self.decay = decay
    self.squared_gradient = None  # EMA of the |G|^2 estimates
    self.trace = None  # EMA of the tr(Sigma) estimates

  def update(self, sums: dict[str, float]) -> dict[str, float]:
    """`sums` from Trainer.noise_scale_sums (host floats) -> the scalars to log."""
    b_small, b_big = sums["small_tokens"], sums["big_tokens"]
    squared = (b_big * sums["big"] - b_small * sums["small"]) / (b_big - b_small)
    trace = (sums["small"] - sums["big"]) / (1.0 / b_small - 1.0 / b_big)
    if self.squared_gradient is None:
      self.squared_gradient, self.trace = squared, trace
    else:
      self.squared_gradient = self.decay * self.squared_gradient + (1 - self.decay) * squared
      self.trace = self.decay * self.trace + (1 - self.decay) * trace
    return {"train/gradient_noise_scale": self.trace / self.squared_gradient if self.squared_gradient > 0
            else float("nan"),
            "train/gradient_noise_scale_this_batch": trace / squared if squared > 0 else float("nan")}


class MetricsWriter:
  """Writes scalars to tensorboard (`events/`) and as one JSON object per line (`metrics.jsonl`).

  Only the main process (process 0) writes; the others accept and drop calls.
  """

  def __init__(self, run_dir: str, enabled: bool):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tensorboard = SummaryWriter(os.path.join(run_dir, "events"))
    self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()

  def event(self, step: int, name: str, **details) -> None:
    """An event line in metrics.jsonl ({"step", "time", "event": name, details...}) and a tensorboard text."""
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), "event": name, **details}) + "\n")
    self._jsonl.flush()
    self._tensorboard.add_text(f"events/{name}", json.dumps(details), step)

  def write_text(self, step: int, name: str, text: str) -> None:
    if self.enabled:
      self._tensorboard.add_text(name, text, step)

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()
      self._jsonl.close()


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(step: int, total_steps: int, scalars: dict[str, float], seconds_per_step: float) -> str:
  eta = format_duration((total_steps - step) * seconds_per_step)
  line = (f"step {step:>6d}/{total_steps}  loss {scalars['train/loss']:.4f}  "
          f"lr {scalars['train/learning_rate']:.2e}  grad_norm {scalars['train/grad_norm']:.3f}  "
          f"tokens/s {scalars['perf/tokens_per_second']:,.0f}  mfu {100 * scalars['perf/mfu']:.1f}%  eta {eta}")
  if "train/moe_dropped_fraction" in scalars:
    line += (f"  moe: dropped {100 * scalars['train/moe_dropped_fraction']:.1f}%  "
             f"max load {scalars['train/moe_max_expert_load']:.2f}")
  return line


def mean_of(values: list[dict[str, np.ndarray]]) -> dict[str, float]:
  return {k: float(np.mean([v[k] for v in values])) for k in values[0]}
