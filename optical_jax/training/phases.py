"""Where a run's time goes: `with timer("dev evaluation"): ...` adds the block's seconds to its
phase, and a phase inside another counts only to itself (the steps' time leaves out the dev
evaluations between them)."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence


class PhaseTimer:
  """Seconds by phase (`seconds`: `phases` first, at 0 until they run, then any other in the
  order it first ran), nested phases excluded from the one around them; `clock` gives the
  time in seconds."""

  def __init__(self, phases: Sequence[str] = (), clock: Callable[[], float] = time.perf_counter):
    self.seconds: dict[str, float] = dict.fromkeys(phases, 0.0)
    self._clock, self._open, self._since = clock, [], 0.0

  def _charge(self, now: float) -> None:
    if self._open:
      self.seconds[self._open[-1]] += now - self._since
    self._since = now

  @contextlib.contextmanager
  def __call__(self, phase: str):
    self._charge(self._clock())
    self.seconds.setdefault(phase, 0.0)
    self._open.append(phase)
    try:
      yield
    finally:
      self._charge(self._clock())
      self._open.pop()
