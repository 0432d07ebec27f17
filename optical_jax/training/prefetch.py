"""Batches built ahead of the device: a background thread prepares the inputs of the next
steps (host batch, teacher vectors, transfer to the devices) while the device runs the current
one, so the device never waits for the host's per-step work (`optical_jax.runtime.prefetch`)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from optical_jax.runtime.prefetch import Prefetched


class Prefetcher(contextlib.AbstractContextManager):
  """`get(step)` returns `build(step)` for steps `start, start + 1, ..., stop - 1` in order.

  With `depth` > 0 a daemon thread builds up to `depth` steps ahead; with 0, `get` builds in
  the caller's thread. An exception in the thread is raised by the `get` of the step it
  failed on, with a note naming the step. Use as a context manager (or call `close`) so the
  thread stops with the loop.
  """

  def __init__(self, build: Callable[[int], Any], start: int, stop: int, *, depth: int):
    self._build, self._next, self.depth = build, start, depth
    self._ahead = None
    if depth > 0 and start < stop:
      self._ahead = Prefetched(
          (build(step) for step in range(start, stop)), depth=depth, name="optical_jax-prefetch",
          note=lambda i: (f"(raised while building the batch of step {start + i + 1} in the "
                          "input pipeline's thread)"))

  def get(self, step: int) -> Any:
    if step != self._next:
      raise ValueError(f"steps are taken in order: expected step {self._next}, got {step}")
    self._next += 1
    if self._ahead is None:
      return self._build(step)
    return next(self._ahead)

  def close(self) -> None:
    if self._ahead is not None:
      self._ahead.close()

  def __exit__(self, *exc) -> None:
    self.close()
