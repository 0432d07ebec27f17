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
