"""How a run stops (`optical_jax.runtime.stopping`): a stop signal is a request honoured after
the step, a second Ctrl-C stops at once, and the handlers before are restored."""

import subprocess
import sys

from tests.helpers import ROOT

# In a process of its own: the signals go to that process, never to the test runner.
_SIGNALS = """
import os, signal
from optical_jax.runtime.stopping import StopSignals

before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
with StopSignals() as stop:
  print("requested before:", stop.requested)
  os.kill(os.getpid(), signal.SIGTERM)  # preemption: the step goes on
  os.kill(os.getpid(), signal.SIGTERM)
  print("requested:", stop.requested, "exit code:", stop.exit_code)
with StopSignals() as stop:
  os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: a request too
  print("requested:", stop.requested, "exit code:", stop.exit_code)
  try:
    os.kill(os.getpid(), signal.SIGINT)  # the second one stops at once
    print("not stopped")
  except KeyboardInterrupt:
    print("stopped at once")
print("restored:", (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before)
"""


def test_a_stop_signal_is_a_request_and_a_second_ctrl_c_stops_at_once():
  result = subprocess.run([sys.executable, "-c", _SIGNALS], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      "requested before: False", "requested: True exit code: 143",
      "requested: True exit code: 130", "stopped at once", "restored: True"]
