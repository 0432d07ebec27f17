"""Batches built ahead of the device: a background thread prepares the inputs of the next
steps (host batch, teacher vectors, transfer to the devices) while the device runs the current
one, so the device never waits for the host's per-step work."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class _Failure:
  def __init__(self, step: int, error: BaseException):
    self.step, self.error = step, error


class Prefetcher:
  """`get(step)` returns `build(step)` for steps `start, start + 1, ..., stop - 1` in order.

  With `depth` > 0 a daemon thread builds up to `depth` steps ahead; with 0, `get` builds in
  the caller's thread. An exception in the thread is raised by the `get` of the step it
  failed on, with a note naming the step. Use as a context manager (or call `close`) so the
  thread stops with the loop.
  """

  def __init__(self, build: Callable[[int], Any], start: int, stop: int, *, depth: int):
    self._build, self._next, self._stop_step, self.depth = build, start, stop, depth
    self._closed = threading.Event()
    self._thread = None
    if depth > 0 and start < stop:
      self._queue: queue.Queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._fill, args=(start,), daemon=True,
                                      name="optical_jax-prefetch")
      self._thread.start()

  def _fill(self, start: int) -> None:
    for step in range(start, self._stop_step):
      try:
        item = (step, self._build(step))
      except BaseException as e:  # handed to the loop, which raises it in its own thread
        item = (step, _Failure(step, e))
      while not self._closed.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if self._closed.is_set() or isinstance(item[1], _Failure):
        return

  def get(self, step: int) -> Any:
    if step != self._next:
      raise ValueError(f"steps are taken in order: expected step {self._next}, got {step}")
    self._next += 1
    if self._thread is None:
      return self._build(step)
    while True:
      try:
        built_step, item = self._queue.get(timeout=0.5)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise RuntimeError(f"the input pipeline's thread stopped before step {step}") from None
    assert built_step == step, (built_step, step)
    if isinstance(item, _Failure):
      item.error.add_note(f"(raised while building the batch of step {step + 1} in the input "
                          "pipeline's thread)")
      raise item.error
    return item

  def close(self) -> None:
    self._closed.set()
    if self._thread is not None:
      self._thread.join(timeout=5)

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False
