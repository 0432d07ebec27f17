"""`Prefetched`, the one background-thread prefetcher (training's batches, evaluation's
tokenised chunks): items in order, computed ahead, errors raised where their item would have
come, and closing stops the thread and runs the items' cleanup in it."""

import threading

import pytest

from optical_jax.runtime.prefetch import Prefetched


def test_items_come_in_order_computed_in_the_named_thread():
  threads = []

  def items():
    for i in range(5):
      threads.append(threading.current_thread().name)
      yield i * i

  assert list(Prefetched(items(), depth=2, name="optical_jax-test")) == [0, 1, 4, 9, 16]
  assert set(threads) == {"optical_jax-test"}
  assert not any(t.name == "optical_jax-test" for t in threading.enumerate())


def test_an_error_is_raised_at_its_item_with_its_note():
  def items():
    yield "a"
    yield "b"
    raise ValueError("bad third item")

  ahead = Prefetched(items(), note=lambda i: f"item {i}")
  assert [next(ahead), next(ahead)] == ["a", "b"]
  with pytest.raises(ValueError, match="bad third item") as error:
    next(ahead)
  assert error.value.__notes__ == ["item 2"]
  with pytest.raises(StopIteration):
    next(ahead)


def test_closing_early_stops_the_thread_and_runs_the_cleanup_there():
  cleaned = []

  def items():
    try:
      for i in range(1000):
        yield i
    finally:
      cleaned.append(threading.current_thread().name)

  with Prefetched(items(), name="optical_jax-early") as ahead:
    assert next(ahead) == 0
  assert cleaned == ["optical_jax-early"]
  assert not any(t.name == "optical_jax-early" for t in threading.enumerate())
