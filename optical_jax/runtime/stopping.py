"""How a run stops: Ctrl-C that always stops the program, SIGINT and SIGTERM as a request to
stop after the current step, and the one line an interrupted program ends with.

Python turns SIGINT into a `KeyboardInterrupt` raised wherever the main thread happens to
be. Raised inside a garbage-collector callback (JAX's `_xla_gc_callback` runs in every
collection) or a `__del__`, it is printed as "Exception ignored in ..." and lost: the
program goes on and exits 0. `install()` (called by `cli.run`) records every SIGINT, and
delivers a lost interrupt again a moment later, outside the callback; `received()` says
whether one came, so `cli.run` exits 130 even if one was lost for good; `check()` raises it
at a safe point (between collections, between phases). `exit_interrupted()` ends the program
with the line `on_interrupt` last set ("interrupted; what is kept").

The train loop stops between steps instead (`StopSignals`): a preempted or interrupted run
saves its step and exits 128 + the signal's number. A lost peer of a multi-process run ends
the process from `distributed.PeerWatch`.

Standard library only, so any module may import it.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading

_received = 0  # SIGINTs seen by our handler, or interrupts some callback swallowed
_installed = False
_kept: str | None = None  # what an interrupted program keeps, for its last line


def _on_sigint(signum, frame):
  global _received
  _received += 1
  raise KeyboardInterrupt


def _deliver_again() -> None:
  # Runs the main thread's current SIGINT handler (ours, or the train loop's `StopSignals`) at
  # its next bytecode: past the callback that swallowed the interrupt.
  _thread.interrupt_main(signal.SIGINT)


def _unraisable_hook(previous):
  def hook(unraisable):
    global _received
    if isinstance(unraisable.exc_value, KeyboardInterrupt) or (
        unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt)):
      _received += 1
      timer = threading.Timer(0.01, _deliver_again)
      timer.daemon = True
      timer.start()
      return  # no "Exception ignored in ..." traceback: the interrupt is not ignored
    previous(unraisable)
  return hook


def install() -> None:
  """Our SIGINT handler and the hook that redelivers swallowed interrupts (main thread
  only; a second call does nothing)."""
  global _installed
  if _installed or threading.current_thread() is not threading.main_thread():
    return
  signal.signal(signal.SIGINT, _on_sigint)
  sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
  _installed = True


def release() -> None:
  """For the way out: from here a Ctrl-C ends the process at once (the default action, in
  case the exit hangs), and an interrupt still to be delivered again is dropped."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # interrupt_main does nothing under SIG_DFL


def received() -> bool:
  """Whether Ctrl-C was pressed since `install()`."""
  return _received > 0


def check() -> None:
  """Raises `KeyboardInterrupt` if Ctrl-C was pressed: for loops that must not go on after
  an interrupt some library swallowed."""
  if _received:
    raise KeyboardInterrupt


def on_interrupt(kept: str) -> None:
  """What Ctrl-C from now on leaves behind, said after "interrupted; "."""
  global _kept
  _kept = kept


def exit_interrupted() -> None:
  """Ends the program after an interrupt: exit 130 with one line saying what is kept."""
  release()  # no second KeyboardInterrupt on the way out
  print(f"interrupted; {_kept}" if _kept else "interrupted", file=sys.stderr, flush=True)
  sys.exit(130)


class StopSignals:
  """Turns SIGINT and SIGTERM into a request to stop after the current step (`requested`),
  restoring the previous handlers on exit. A second Ctrl-C stops at once."""

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum

  @property
  def requested(self) -> bool:
    return self.signal is not None

  @property
  def exit_code(self) -> int:
    return 128 + (self.signal or 0)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
