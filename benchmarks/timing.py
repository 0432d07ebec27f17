"""Shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

import os
import platform
import statistics
import time

# The instruction sets that decide which matmul kernels a CPU library can pick.
_MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU in one line: vendor, model name, family/model (which tell CPU generations apart
  where the hypervisor hides the model name), cores and the matmul-relevant instruction sets."""
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
  flags = set(fields.get("flags", "").split())
  return (f"{fields.get('vendor_id', '?')} {fields.get('model name', '?')} "
          f"(family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), "
          f"{os.cpu_count()} cores, " + (" ".join(f for f in _MATMUL_FLAGS if f in flags)
                                         or "no AVX2"))


def wall_times(fn, repeats: int, warmup: int = 1) -> list[float]:
  """Wall time of each of `repeats` calls of `fn()`, after `warmup` untimed ones
  (compilation, caches)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` after `warmup` untimed calls."""
  return statistics.median(wall_times(fn, repeats, warmup))


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1, block: int = 1) -> dict:
  """Median wall time of each `fns[name]()`, timed in turns so that a shared machine whose
  speed drifts during the run slows all of them alike; `warmup` untimed calls of each come
  first. Each turn times `block` calls of one function; with `block` > 1 the `warmup` calls
  open every turn instead, so that what the previous turn's library leaves running (torch's
  OpenMP threads spin on for a moment after returning) is not charged to the next. The median
  is over all `repeats * block` timed calls."""
  if block == 1:
    for fn in fns.values():
      for _ in range(warmup):
        fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name] += wall_times(fn, block, warmup=warmup if block > 1 else 0)
  return {name: statistics.median(t) for name, t in times.items()}
