"""Joining a multi-process JAX run: with an explicit coordinator, with JAX's own cluster
detection, or not at all (a single process), and one line naming who did not join instead of
JAX's abort after 5 silent minutes; during the run, one line naming a process that was lost
(`watch_peers`).

`initialize_distributed` must come before any JAX computation (JAX's rule).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Callable


class ProcessFlagError(ValueError):
  """Process flags that cannot work together; the message names them (one line from train.py
  and eval.py)."""


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           join_timeout: float = 300) -> None:
  """Joins this process to a multi-process JAX run.

  With `coordinator_address` (and the process count and index), on any machine, several
  processes on one machine included; without, where JAX detects a cluster (Cloud TPU pod
  slices, SLURM, GKE). A single process elsewhere needs no call and gets none.

  With an address, says at once that it waits for the others, and when they have not all
  joined within `join_timeout` seconds, ends the process (exit 1) with one line naming those
  missing, instead of JAX's abort after 5 silent minutes.
  """
  import jax
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ProcessFlagError("--coordinator_address needs --num_processes and --process_id")
    if not 0 <= process_id < num_processes:
      raise ProcessFlagError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    if not join_timeout > 0:
      raise ProcessFlagError(f"--join_timeout must be a positive number of seconds, got "
                             f"{join_timeout:g}")
    if num_processes > 1:
      print(f"process {process_id}: waiting for {num_processes} processes at "
            f"{coordinator_address} (at most {join_timeout:g} s, --join_timeout)",
            file=sys.stderr, flush=True)
    # The coordination service has no authentication: process 0 listens on the interface of
    # the address the others are given, not on every interface (JAX's default).
    bind = {}
    if process_id == 0 and _bindable(coordinator_address):
      bind["coordinator_bind_address"] = coordinator_address
    elif process_id == 0:
      print(f"process 0: {coordinator_address} is not an address of this machine (NAT, a "
            "service address): the coordinator listens on every interface",
            file=sys.stderr, flush=True)
    # JAX's own deadline ends in a C++ abort ("another task died"): ours comes first.
    with _join_watchdog(coordinator_address, num_processes, process_id, join_timeout):
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=int(math.ceil(join_timeout)) + 60,
                                 **bind)
    return
  if num_processes not in (None, 1) or process_id not in (None, 0):
    raise ProcessFlagError("--num_processes and --process_id need --coordinator_address")
  if _cluster_detected():
    jax.distributed.initialize()


def missing_processes(coordinator_address: str, num_processes: int, process_id: int) -> str:
  """Who, seen from `process_id`, has not joined: the others (all of them when there are
  two), or the coordinator, process 0, when nothing listens at its address."""
  others = [i for i in range(num_processes) if i != process_id]
  if process_id != 0 and not _listening(coordinator_address):
    return f"process 0 (nothing listens at {coordinator_address})"
  if len(others) == 1:
    return f"process {others[0]}"
  shown = ", ".join(map(str, others if len(others) <= 8 else [*others[:7], "..."]))
  return f"one or more of processes {shown}"


def _bindable(address: str) -> bool:
  """Whether this machine can listen at `address`'s host (one of its own addresses)."""
  import socket
  host, _, _ = address.rpartition(":")
  host = host.strip("[]") or "localhost"
  try:
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
      s.bind((host, 0))
    return True
  except OSError:
    return False


def _listening(address: str) -> bool:
  import socket
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=2):
      return True
  except (OSError, ValueError):
    return False


@contextlib.contextmanager
def _join_watchdog(coordinator_address: str, num_processes: int, process_id: int,
                   timeout: float):
  """Ends the process with one line when the block (JAX's join, which holds no Python lock
  while it waits) is still running after `timeout` seconds."""
  done = threading.Event()

  def expire():
    if done.wait(timeout):
      return
    missing = missing_processes(coordinator_address, num_processes, process_id)
    print(f"error: process {process_id} of {num_processes}: {missing} did not join at "
          f"{coordinator_address} within {timeout:g} s (--join_timeout); start every process "
          f"with --coordinator_address {coordinator_address} --num_processes {num_processes} "
          "and its own --process_id", file=sys.stderr, flush=True)
    os._exit(1)  # the main thread is inside JAX's C++ join: nothing else can stop it

  watchdog = threading.Thread(target=expire, name="join-watchdog", daemon=True)
  watchdog.start()
  try:
    yield
  finally:
    done.set()


class PeerWatch:
  """A multi-process run's watch over its peers (see `watch_peers`)."""

  def __init__(self, kept: Callable[[], str], timeout: float, interval: float, *, client,
               me: int, count: int):
    # client: JAX's coordination-service client (key_value_set / key_value_dir_get); None for
    # a single process.
    self._kept, self._timeout, self._interval = kept, timeout, interval
    self._me, self._count, self._client = me, count, client
    self._stopping = threading.Event()
    if client is None:
      return
    threading.Thread(target=self._beat, name="peer-watchdog", daemon=True).start()

  def stop(self) -> None:
    """Tells the peers this process is done: a finished process is not lost."""
    self._stopping.set()
    if self._client is not None:
      try:
        self._client.key_value_set(f"{_ALIVE}{self._me}", "done", allow_overwrite=True)
      except Exception:
        pass  # the coordinator is gone: nobody is left to tell

  def failed(self, error: BaseException) -> None:
    """Called with an error out of the run: when a peer is gone (its heartbeat has stopped, or
    a collective lost its connection), ends this process in one line; otherwise returns, and
    the caller re-raises."""
    if self._client is None:
      return
    silent = self._silent_peers(wait=3 * self._interval)
    chain, cause = [], error
    while cause is not None and len(chain) < 8:
      chain.append(cause)
      cause = cause.__cause__ or cause.__context__
    text = "\n".join(str(e) for e in chain)
    markers = ("connection closed", "connection reset", "unavailable", "heartbeat",
               "socket closed", "broken pipe")
    broken = [line for line in text.splitlines() if any(m in line.lower() for m in markers)]
    if silent:
      self._lost(" and ".join(f"process {p}" for p in silent), "it stopped answering")
    if broken:
      self._lost("a peer process", f"a collective failed: {broken[0].strip()[:200]}")

  def _silent_peers(self, wait: float) -> list[int]:
    """Peers whose heartbeat does not move over `wait` seconds (finished ones excepted)."""
    try:
      before = self._read()
      time.sleep(wait)
      after = self._read()
    except Exception:
      return [0] if self._me else []
    return [p for p in range(self._count) if p != self._me
            and after.get(f"{_ALIVE}{p}") != "done"
            and after.get(f"{_ALIVE}{p}") == before.get(f"{_ALIVE}{p}")]

  def _read(self) -> dict[str, str]:
    return dict(self._client.key_value_dir_get(_ALIVE))

  def _lost(self, who: str, why: str) -> None:
    print(f"error: process {self._me} of {self._count}: {who} is lost ({why}); {self._kept()}; "
          "start every process again to resume", file=sys.stderr, flush=True)
    os._exit(1)  # the main thread may be inside a collective that never returns

  def _beat(self) -> None:
    # A peer's clock starts at its first heartbeat: one that starts later is not lost.
    heard = {p: (None, None) for p in range(self._count) if p != self._me}
    beats = 0
    while not self._stopping.wait(self._interval):
      beats += 1
      try:
        self._client.key_value_set(f"{_ALIVE}{self._me}", str(beats), allow_overwrite=True)
        values = self._read()
      except Exception:  # the coordination service lives in process 0
        if not self._stopping.is_set():
          self._lost("process 0 (the coordinator)" if self._me else "the coordination service",
                     "it stopped answering")
        return
      now = time.monotonic()
      for peer, (value, since) in list(heard.items()):
        current = values.get(f"{_ALIVE}{peer}")
        if current == "done":
          del heard[peer]
        elif current != value:
          heard[peer] = (current, now)
        elif since is not None and now - since > self._timeout and not self._stopping.is_set():
          self._lost(f"process {peer}", f"nothing from it for {self._timeout:g} s")


_ALIVE = "optical_jax/alive/"


def watch_peers(kept: Callable[[], str], *, timeout: float = 60.0,
                interval: float = 2.0) -> PeerWatch:
  """In a multi-process run, a daemon thread that publishes this process's heartbeat to JAX's
  coordination service every `interval` seconds and, when a peer's has not moved for
  `timeout` seconds (a process killed or its host gone, while a collective hangs), ends this
  process (exit 1) with one line naming the peer and what is kept (`kept()`, e.g. the last
  checkpoint) instead of JAX's C++ abort. Where a collective fails fast instead (Gloo on CPU:
  "connection closed by peer"), `PeerWatch.failed(error)` says the same line. `stop()` tells
  the peers this process is done. A single process gets no thread."""
  import jax
  client = None
  if jax.process_count() > 1:
    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
  return PeerWatch(kept, timeout, interval, client=client, me=jax.process_index(),
                   count=jax.process_count())


def _cluster_detected() -> bool:
  """Whether JAX's own auto-detection finds a cluster here (Cloud TPU VMs, SLURM, Open MPI,
  Kubernetes), asked the way `jax.distributed.initialize()` asks it."""
  try:
    from jax._src import clusters  # JAX's detection; no public API says "is there a cluster"
    return any(not env.opt_in_only_method and env.is_env_present()
               for env in clusters.ClusterEnv._cluster_types)
  except Exception:  # a JAX without it: the environment variables those detectors read
    return (int(os.environ.get("SLURM_NTASKS", "1")) > 1
            or bool(os.environ.get("TPU_WORKER_HOSTNAMES"))
            or bool(os.environ.get("OMPI_COMM_WORLD_SIZE")))
