"""Process setup that has to happen before JAX starts: the host memory allocator.

A CPU train step allocates and frees gigabytes of temporary buffers. Under glibc's default
malloc, blocks that large are mmap-ed and returned to the kernel on free, so every step
page-faults them in again and the kernel zeroes them: on the 29M benchmark model that is
~690k page faults and ~1.4 s of kernel time per step, about a tenth of the step
(README, "Performance"). With `train.host_allocator = "reuse"` the process runs under glibc
tunables that keep freed memory for reuse instead: one arena, no mmap-ed blocks, no trimming.
The price is that the process's resident memory stays at its peak.

glibc reads its tunables only when a process starts, so `apply_host_allocator` re-executes the
current command with them set (once: the new process finds them in its environment).
"""

from __future__ import annotations

import os
import platform
import sys

ALLOCATORS = ("reuse", "system")
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
