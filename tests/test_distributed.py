"""Joining a multi-process run: when a run joins a cluster, flags that cannot work, who did
not join."""

import jax
import pytest

from optical_jax.runtime import distributed


def test_a_slurm_job_is_detected_as_a_cluster(monkeypatch):
  slurm = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  for name in (*slurm, "TPU_WORKER_HOSTNAMES", "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  assert not distributed._cluster_detected()
  for name, value in slurm.items():  # what srun sets for each task
    monkeypatch.setenv(name, value)
  assert distributed._cluster_detected()


@pytest.mark.parametrize("arguments, message", [
    (("localhost:1234", None, 0), "--coordinator_address needs --num_processes and --process_id"),
    (("localhost:1234", 2, 2), r"--process_id must be in \[0, 2\), got 2"),
    ((None, 2, 1), "--num_processes and --process_id need --coordinator_address"),
])
def test_process_flags_that_cannot_work_are_named(arguments, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize_distributed(*arguments)


def test_a_single_process_is_left_alone(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(distributed, "_cluster_detected", lambda: False)
  distributed.initialize_distributed(None, None, None)
  assert not calls
  monkeypatch.setattr(distributed, "_cluster_detected", lambda: True)
  distributed.initialize_distributed(None, None, None)
  assert calls == [((), {})]


def test_the_processes_that_did_not_join_are_named(monkeypatch):
  monkeypatch.setattr(distributed, "_listening", lambda address: True)
  assert distributed.missing_processes("h:1", 2, 0) == "process 1"
  assert distributed.missing_processes("h:1", 2, 1) == "process 0"
  assert distributed.missing_processes("h:1", 4, 2) == "one or more of processes 0, 1, 3"
  monkeypatch.setattr(distributed, "_listening", lambda address: False)
  assert distributed.missing_processes("h:1", 3, 1) == "process 0 (nothing listens at h:1)"


@pytest.mark.slow
def test_a_process_whose_partner_never_starts_says_so_and_gives_up_in_one_line(tmp_path):
  import os
  import socket
  import subprocess
  import sys
  from tests.helpers import ROOT
  with socket.socket() as s:  # a free port
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  result = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", "configs/tiny.py", "--workdir",
       str(tmp_path / "W"), f"--coordinator_address=localhost:{port}", "--num_processes=2",
       "--process_id=0", "--join_timeout=3"], capture_output=True, text=True, timeout=120,
      cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[0] == (f"process 0: waiting for 2 processes at localhost:{port} (at most 3 s, "
                      "--join_timeout)")
  assert lines[-1].startswith(f"error: process 0 of 2: process 1 did not join at "
                              f"localhost:{port} within 3 s (--join_timeout)")
  # Our watchdog's line at --join_timeout, not JAX's C++ abort at its own deadline (which
  # comes 60 s later, and after 5 minutes without the flag).
  assert len(lines) == 2 and "Check failure" not in result.stderr


class _Store:
  """JAX's coordination-service key-value store, as the peer watch uses it."""

  def __init__(self):
    self.values, self.lock = {}, __import__("threading").Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.lock:
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class _Recorded(distributed.PeerWatch):
  """A peer watch that records its one line instead of ending the process."""

  def _lost(self, who, why):
    self.line = f"{who} is lost ({why}); {self._kept()}"
    self._stopping.set()  # the watchdog thread ends its loop
    if __import__("threading").current_thread().name != "peer-watchdog":
      raise SystemExit  # out of the caller, as os._exit would be


def _watch(store, me, **options):
  return _Recorded(lambda: "checkpoint 4 kept", options.pop("timeout", 0.4),
                   options.pop("interval", 0.05), client=store, me=me, count=2)


def test_a_peer_whose_heartbeat_stops_is_named_after_the_timeout():
  import time
  store = _Store()
  survivor, peer = _watch(store, 0), _watch(store, 1)
  time.sleep(0.3)
  assert not hasattr(survivor, "line")  # both beating: nobody is lost
  peer._stopping.set()  # killed: no "done", no more heartbeats
  deadline = time.monotonic() + 5
  while not hasattr(survivor, "line") and time.monotonic() < deadline:
    time.sleep(0.05)
  assert survivor.line == ("process 1 is lost (nothing from it for 0.4 s); "
                           "checkpoint 4 kept")


def test_a_finished_peer_is_not_lost_and_a_plain_error_is_left_to_the_caller():
  import time
  store = _Store()
  # A timeout a busy 2-core runner's thread scheduling cannot reach (0.4 s could: the
  # survivor named the peer lost before it said "done"), waited out after the peer stops.
  survivor, peer = _watch(store, 0, timeout=1.5), _watch(store, 1, timeout=1.5)
  time.sleep(0.2)
  peer.stop()  # finished: says "done"
  time.sleep(2.0)
  assert not hasattr(survivor, "line")
  survivor.failed(ValueError("a bad field"))  # every peer still answers: not a lost peer
  assert not hasattr(survivor, "line")
  with pytest.raises(SystemExit):
    survivor.failed(RuntimeError("Gloo all-reduce failed: Connection closed by peer"))
  assert survivor.line.startswith("a peer process is lost (a collective failed: Gloo")
  survivor.stop()


def test_a_single_process_is_not_watched(monkeypatch):
  threads, thread = [], distributed.threading.Thread

  def spy(*args, **kwargs):  # threading.Thread, recording the peer watch's
    if kwargs.get("name") == "peer-watchdog":
      threads.append(kwargs)
    return thread(*args, **kwargs)

  monkeypatch.setattr(distributed.threading, "Thread", spy)
  monkeypatch.setattr(distributed.os, "_exit", lambda code: pytest.fail(f"os._exit({code})"))
  watch = distributed.watch_peers(lambda: "kept")
  assert threads == []  # no heartbeat thread
  # Returns (the caller re-raises): with no peers, a lost connection is nobody's.
  assert watch.failed(RuntimeError("Connection closed by peer")) is None
  watch.stop()
  assert threads == []


def test_the_coordinator_listens_only_at_the_address_it_was_given(tmp_path):
  # The coordination service has no authentication: reachable at 127.0.0.1 (the given
  # address), not at 127.0.0.2 (another loopback address, which every-interface would serve).
  import os
  import socket
  import subprocess
  import sys
  import time
  from tests.helpers import ROOT
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  code = ("from optical_jax.runtime.distributed import initialize_distributed; "
          f"initialize_distributed('127.0.0.1:{port}', 2, 0, join_timeout=60)")
  process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    deadline = time.monotonic() + 50
    while not distributed._listening(f"127.0.0.1:{port}") and time.monotonic() < deadline:
      time.sleep(0.1)
    assert distributed._listening(f"127.0.0.1:{port}")
    assert not distributed._listening(f"127.0.0.2:{port}")
  finally:
    process.kill()
    process.communicate()


def test_an_address_that_is_not_this_machines_keeps_jaxs_every_interface(monkeypatch, capsys):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  distributed.initialize_distributed("192.0.2.1:1234", 1, 0)  # TEST-NET-1: nobody's address
  assert "coordinator_bind_address" not in calls[0]
  assert ("process 0: 192.0.2.1:1234 is not an address of this machine (NAT, a service "
          "address): the coordinator listens on every interface") in capsys.readouterr().err
  distributed.initialize_distributed("127.0.0.1:1234", 1, 0)
  assert calls[1]["coordinator_bind_address"] == "127.0.0.1:1234"
