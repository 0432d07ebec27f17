"""Process set-up for `train.py` and `eval.py`: multi-host initialisation, host memory, the
compilation cache, offline asset references, and a console that shows only our messages.

Call order matters: `configure_host_memory` before JAX's first computation (glibc fixes a
thread's malloc arena when it first allocates), `initialize_distributed` before any JAX
computation (JAX's rule).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from pathlib import Path

import ml_collections

log = logging.getLogger("optical_jax")

# Loggers of libraries whose INFO lines (one per checkpoint save, distributed set-up) would
# scroll our progress bar away: they go to the workdir's log file, their warnings to stderr.
_CHATTY_LOGGERS = ("absl", "orbax", "jax._src.distributed", "huggingface_hub")


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


def configure_host_memory(setting: str) -> bool:
  """Applies `config.runtime.host_memory` (see `optical_jax.host_memory`)."""
  from optical_jax import host_memory
  return host_memory.configure(setting)


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Keeps compiled XLA programs in `cache_dir/xla`, so a rerun, a resumed run or another run
  with the same shapes (the demo's evaluations) loads them instead of compiling again."""
  import jax
  if config.runtime.compilation_cache:
    jax.config.update("jax_compilation_cache_dir",
                      str(Path(config.runtime.cache_dir).expanduser() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def resolve_assets(config: ml_collections.ConfigDict, *, training: bool = True
                   ) -> ml_collections.ConfigDict:
  """A copy of `config` with asset references (`pypi:`, `bible:`, `ciral:`, `bitext:`) made
  paths, fetching or building them on first use; `training=False` leaves the training data."""
  import copy
  from optical_jax.assets import resolve
  # A deep copy: the collections are shared with the caller's config otherwise.
  config = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  r = lambda value: resolve(value, config.runtime.cache_dir) if value else value
  config.model.teacher, config.model.student = r(config.model.teacher), r(config.model.student)
  if training:
    config.data.train_file = r(config.data.train_file)
  for spec in config.eval.collections:
    for field in ("topics", "corpus", "qrels"):
      spec[field] = r(spec[field])
  return config


def quiet_libraries(log_file: str | Path | None = None) -> None:
  """Our own messages on stderr as plain lines; chatty libraries' INFO lines into `log_file`
  (dropped without one) and only their warnings on stderr; transformers' only errors (it
  warns that PyTorch is missing, which we never need)."""
  import sys
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_handler().setLevel(logging.WARNING)
  console = logging.StreamHandler(sys.stderr)
  console.setFormatter(logging.Formatter("%(message)s"))
  ours = logging.getLogger("optical_jax")
  ours.handlers, ours.propagate = [console], False
  ours.setLevel(logging.INFO)
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


def is_primary() -> bool:
  """Whether this is process 0, the one that writes files and shows progress."""
  import jax
  return jax.process_index() == 0


def to_host(tree):
  """A replicated (or fully addressable) tree of arrays as numpy arrays, on any process."""
  import jax
  import numpy as np
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x), tree)
