"""Host-CPU settings of the process: the memory allocator (set before JAX starts) and the
matmul library of XLA:CPU (an option of each compiled step function).

A CPU train step allocates and frees gigabytes of temporary buffers. Under glibc's default
malloc, blocks that large are mmap-ed and returned to the kernel on free, so every step
page-faults them in again and the kernel zeroes them: on the 29M benchmark model that is
~690k page faults and ~1.4 s of kernel time per step, about a tenth of the step
(README, "Performance"). With `train.host_allocator = "reuse"` the process runs under glibc
tunables that keep freed memory for reuse instead: one arena, no mmap-ed blocks, no trimming.
The price is that the process's resident memory stays at its peak.

glibc reads its tunables only when a process starts, so `apply_host_allocator` re-executes the
current command with them set (once: the new process finds them in its environment).

XLA:CPU hands each matmul to a library. Its default, YNNPACK, runs a batched matmul (attention's
one small product per row and head) on a single core, while oneDNN spreads it over the cores;
the two are level on plain 2-D matmuls. `train.cpu_dot_library = "onednn"` compiles the step
functions with oneDNN's matmuls: the 29M benchmark step went from 4,842 to 4,292 ms in one
process (README, "Performance").
"""

from __future__ import annotations

import os
import platform
import sys

ALLOCATORS = ("reuse", "system")
CPU_DOT_LIBRARIES = ("onednn", "ynnpack")
REUSE_TUNABLES = {"glibc.malloc.arena_max": "1", "glibc.malloc.mmap_max": "0",
                  "glibc.malloc.trim_threshold": str(1 << 46)}


def tunables(current: str, wanted: dict[str, str]) -> str:
  """`current` GLIBC_TUNABLES ('name=value:name=value') with `wanted` set, other entries kept."""
  entries = dict(item.split("=", 1) for item in current.split(":") if "=" in item)
  entries.update(wanted)
  return ":".join(f"{name}={value}" for name, value in entries.items())


def needs_restart(allocator: str, environ: dict[str, str] | None = None, libc: str | None = None) -> str | None:
  """The GLIBC_TUNABLES value to restart with for `allocator`, or None when this process already runs under it."""
  if allocator not in ALLOCATORS:
    raise ValueError(f"train.host_allocator must be one of {', '.join(ALLOCATORS)}; got {allocator!r}")
  environ = os.environ if environ is None else environ
  libc = platform.libc_ver()[0] if libc is None else libc
  if allocator == "system" or libc != "glibc":  # other C libraries do not read glibc's tunables
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  wanted = tunables(current, REUSE_TUNABLES)
  return None if tunables(current, {}) == wanted else wanted


def apply_host_allocator(allocator: str) -> None:
  """Re-executes this command under the tunables of `allocator` if it is not already
  running under them. Call it first thing in main, before JAX or any thread has started."""
  value = needs_restart(allocator)
  if value is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # sys.orig_argv is the command as typed (interpreter options, -m MODULE, arguments).
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], dict(os.environ, GLIBC_TUNABLES=value))


def compiler_options(cpu_dot_library: str, backend: str) -> dict[str, str | bool] | None:
  """XLA compiler options of a step function compiled for `backend` ('cpu' | 'gpu' | 'tpu'): on CPU,
  those that give its matmuls to `cpu_dot_library` (ynnpack, XLA's default, needs none); elsewhere None."""
  if cpu_dot_library not in CPU_DOT_LIBRARIES:
    raise ValueError(f"train.cpu_dot_library must be one of {', '.join(CPU_DOT_LIBRARIES)}; got {cpu_dot_library!r}")
  if backend != "cpu" or cpu_dot_library == "ynnpack":
    return None
  # Each dot on its own (fusing elementwise work into oneDNN's matmuls is not used: it is experimental in XLA).
  return {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
