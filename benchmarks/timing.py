"""Shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

import statistics
import time


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
