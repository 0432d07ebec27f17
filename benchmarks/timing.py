"""Shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

import statistics
import time


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` after `warmup` untimed calls (compilation, caches)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1) -> dict:
  """Median wall time of each `fns[name]()`, timed in turns (one call of each per round) so
  that a shared machine whose speed drifts during the run slows all of them alike."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
