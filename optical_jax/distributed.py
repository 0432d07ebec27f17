"""Joining a multi-process JAX run: with an explicit coordinator, with JAX's own cluster
detection, or not at all (a single process), and one line naming who did not join instead of
JAX's abort after 5 silent minutes.

`initialize_distributed` must come before any JAX computation (JAX's rule).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading


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
  from optical_jax.config import ConfigError  # a ValueError: one line from train.py/eval.py
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ConfigError("--coordinator_address needs --num_processes and --process_id")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    if not join_timeout > 0:
      raise ConfigError(f"--join_timeout must be a positive number of seconds, got "
                        f"{join_timeout:g}")
    if num_processes > 1:
      print(f"process {process_id}: waiting for {num_processes} processes at "
            f"{coordinator_address} (at most {join_timeout:g} s, --join_timeout)",
            file=sys.stderr, flush=True)
    # JAX's own deadline ends in a C++ abort ("another task died"): ours comes first.
    with _join_watchdog(coordinator_address, num_processes, process_id, join_timeout):
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=int(math.ceil(join_timeout)) + 60)
    return
  if num_processes not in (None, 1) or process_id not in (None, 0):
    raise ConfigError("--num_processes and --process_id need --coordinator_address")
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
