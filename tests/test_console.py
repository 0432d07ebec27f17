"""What a run shows on the terminal: library chatter goes to the log file, not stderr."""

import logging

import pytest

from optical_jax.runtime.console import _CHATTY_LOGGERS, quiet_libraries


@pytest.fixture(autouse=True)
def _restored_loggers():
  """The loggers as they were: a test leaves no handler on a file that is gone."""
  names = (*_CHATTY_LOGGERS, "optical_jax")
  saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate,
               logging.getLogger(n).level) for n in names}
  yield
  for name, (handlers, propagate, level) in saved.items():
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = handlers, propagate
    logger.setLevel(level)


def test_orbax_timing_warnings_go_to_the_log_and_real_warnings_to_stderr(tmp_path, capfd):
  log = tmp_path / "logs" / "libraries.log"
  quiet_libraries(log)
  absl = logging.getLogger("absl")
  absl.warning("Waiting for previous save to complete took %f seconds. If this number is "
               "high, consider checkpointing less frequently.", 1.39)
  absl.warning("a real warning")
  for handler in absl.handlers:
    handler.flush()
  err = capfd.readouterr().err
  assert "a real warning" in err and "Waiting for previous save" not in err
  assert "Waiting for previous save to complete took 1.39" in log.read_text()
