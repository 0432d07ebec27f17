"""Work done ahead in a background thread: `Prefetched` computes the items of an iterator up
to `depth` ahead of the consumer (training's batches, evaluation's tokenised chunks), so the
host's work overlaps the device's."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Prefetched(contextlib.AbstractContextManager, Generic[T]):
  """The items of `items`, in order, each computed in a daemon thread (named `name`) while
  the consumer works on the ones before, at most `depth` (>= 1) waiting.

  An exception of `items` is raised in the consumer where its item would have come, with
  `note(index)` added where given. Closing (`close`, the end of a `with` block, the last
  item or an error) stops the thread and waits for the item it is computing, so nothing runs
  on after it; `items.close()` (a generator's cleanup) then runs in the thread.
  """

  def __init__(self, items: Iterator[T], *, depth: int = 1, name: str = "optical_jax-prefetch",
               note: Callable[[int], str] | None = None):
    self._items, self._note, self._name = items, note, name
    self._slots: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._taken, self._closed = 0, False
    self._thread = threading.Thread(target=self._work, name=name, daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._slots.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self) -> None:
    try:
      for item in self._items:
        if not self._put(("item", item)):
          return
      self._put(("done", None))
    except BaseException as e:  # delivered to the consumer, raised there
      self._put(("error", e))
    finally:
      close = getattr(self._items, "close", None)
      if close is not None:
        close()

  def __iter__(self) -> "Prefetched[T]":
    return self

  def __next__(self) -> T:
    if self._closed:
      raise StopIteration
    while True:
      try:
        kind, value = self._slots.get(timeout=0.5)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._slots.empty():
          self.close()
          raise RuntimeError(f"the thread {self._name} stopped before item "
                             f"{self._taken}") from None
    if kind == "item":
      self._taken += 1
      return value
    self.close()
    if kind == "error":
      if self._note is not None:
        value.add_note(self._note(self._taken))
      raise value
    raise StopIteration

  def close(self) -> None:
    self._closed = True
    self._stop.set()
    if self._thread is not threading.current_thread():
      self._thread.join()

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):  # dropped unclosed: the thread stops at its next item
    self._stop.set()
