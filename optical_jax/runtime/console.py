"""What a run shows on the terminal: our own messages as plain lines on stderr, libraries'
INFO lines in the workdir's log file, their warnings on stderr."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Loggers of libraries whose INFO lines (one per checkpoint save, distributed set-up) would
# scroll our progress bar away: they go to the workdir's log file, their warnings to stderr.
_CHATTY_LOGGERS = ("absl", "orbax", "jax._src.distributed", "huggingface_hub")


def quiet_libraries(log_file: str | Path | None = None) -> None:
  """Our own messages on stderr as plain lines; chatty libraries' INFO lines into `log_file`
  (dropped without one) and only their warnings on stderr; transformers' only errors (it
  warns that PyTorch is missing, which we never need)."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_handler().setLevel(logging.WARNING)
  console = logging.StreamHandler(sys.stderr)
  console.setFormatter(logging.Formatter("%(message)s"))
  ours = logging.getLogger("optical_jax")
  ours.handlers, ours.propagate = [console], False
  ours.setLevel(logging.INFO)
  # transformers warns at import, before any setter could run: its variable is read then.
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  try:
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
  except ImportError:  # pragma: no cover - transformers is a dependency
    pass
  warnings = logging.StreamHandler(sys.stderr)
  warnings.setLevel(logging.WARNING)
  warnings.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
  # Orbax's errors (absl's logger) are failed checkpoint writes, which the run reports itself
  # in one line (`training.checkpoints.CheckpointFault`): their tracebacks go to the log file.
  warnings.addFilter(lambda record: not (record.name in ("absl", "orbax") and (
      record.levelno >= logging.ERROR or record.exc_info)))
  # Orbax times each wait for the previous asynchronous save as a warning: a measurement, not
  # a fault (the run goes on); it goes to the log file.
  warnings.addFilter(lambda record: not (record.name in ("absl", "orbax") and str(
      record.msg).startswith("Waiting for previous save to complete")))
  handlers = [warnings]
  if log_file is not None:
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handlers.append(to_file)
  for name in _CHATTY_LOGGERS:
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = list(handlers), False
    logger.setLevel(logging.INFO if log_file is not None else logging.WARNING)
  if not getattr(sys.unraisablehook, "_quiet_closed_loops", False):
    sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)


def _quiet_closed_loops(hook):
  """`hook` (`sys.unraisablehook`), except for "Event loop is closed": after a failed
  checkpoint write, TensorStore's callbacks into Orbax's finished event loops raise it dozens
  of times; it says nothing the run's one-line error does not, so it goes to the libraries'
  log."""
  def unraisablehook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == (
        "Event loop is closed"):
      logging.getLogger("absl").debug("after a failed write: %s", unraisable.exc_value)
      return
    hook(unraisable)
  unraisablehook._quiet_closed_loops = True
  return unraisablehook
