"""Host memory settings for training on CPU: glibc's malloc made to keep freed memory.

On CPU, XLA's buffers are host memory. Every train step allocates its temporary buffers
(about 0.5 GiB for MiniLM at batch 32, length 64) and frees them at its end, from XLA's own
threads. By default glibc gives each such thread its own malloc arena and serves large blocks
(above 32 MiB at most; in a thread's arena, anything over 64 MiB) with fresh `mmap`s that go
back to the OS when freed. So every step page-faults its whole working memory in again:
535 MiB per MiniLM step, which made a step with cached teacher tokens 12-17% slower
(BENCHMARKS.md, "Host memory").

`retain_freed_host_memory()` sets one arena for all threads, no `mmap` for large blocks and no
trimming of the heap, so freed memory is reused and the process keeps its peak memory. glibc
fixes a thread's arena when the thread first allocates: call it before JAX (or numpy, torch)
starts threads, i.e. before the first JAX computation; `train.py` and `eval.py` do so. This
module imports nothing else for that reason. `optical_jax.training.loop.train_and_evaluate`, called
from a notebook or script that did not, warns on CPU that "retain" is not in effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# The values of config.runtime.host_memory (config.HOST_MEMORY is this list).
SETTINGS = ("retain", "release")

# mallopt() parameters, glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_retained = False  # whether retain_freed_host_memory() has succeeded in this process


def _glibc():
  """The C library where it is glibc, else None (macOS, musl)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  # Only glibc has gnu_get_libc_version; other C libraries' mallopt codes mean other things.
  return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def retain_freed_host_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse (see the module docstring). Returns
  False, changing nothing, where the C library is not glibc (macOS, musl)."""
  global _retained
  libc = _glibc()
  if libc is None:
    return False
  _retained = all(libc.mallopt(parameter, value) == 1 for parameter, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)))
  return _retained


def missing_retain() -> bool:
  """Whether "retain" could apply here (glibc) but has not been applied in this process."""
  return not _retained and _glibc() is not None


def check(setting: str) -> None:
  """Raises ValueError unless `setting` is one of `SETTINGS`."""
  if setting not in SETTINGS:
    raise ValueError(f"host memory setting must be one of {SETTINGS}, got {setting!r}")


def configure(setting: str) -> bool:
  """Applies a host memory setting (`config.runtime.host_memory`): "retain" calls
  `retain_freed_host_memory()`, "release" leaves malloc as it is. Returns whether malloc's
  settings changed."""
  check(setting)
  return setting == "retain" and retain_freed_host_memory()
