"""What guards a workdir: one run at a time (a lock naming host and pid), the same
configuration on resume, and a clean stop on Ctrl-C or SIGTERM (preemption)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

from optical_jax.config import REVISIONS, ConfigError, base_config, flat_fields

log = logging.getLogger("optical_jax")

# Fields a resumed run may change freely: they do not change what is trained.
RESUMABLE_CHANGES = ("runtime.", "eval.", "demo.", "data.teacher_cache", "data.prefetch",
                     "model.student_init",
                     "train.halt_after_steps",
                     "train.log_every_steps", "train.eval_every_steps",
                     "train.checkpoint_every_steps", "train.keep_checkpoints",
                     "train.resume_with_changes")


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@contextlib.contextmanager
def workdir_lock(workdir: Path, *, enabled: bool = True):
  """Holds `workdir/.lock` (host and pid) while the block runs. A lock left by a dead
  process of this host is taken over with a message; a live one is refused."""
  if not enabled:
    yield
    return
  path = workdir / ".lock"
  me = {"host": socket.gethostname(), "pid": os.getpid()}
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        holder = json.loads(path.read_text())
      except (OSError, ValueError):
        holder = {}
      host, pid = holder.get("host"), holder.get("pid")
      if host == me["host"] and isinstance(pid, int) and not _alive(pid):
        log.warning("taking over %s: its run (pid %d on %s) is no longer running", path, pid,
                    host)
        path.unlink(missing_ok=True)
        continue
      raise WorkdirBusy(f"{workdir} is in use by another run (pid {pid} on {host}); wait for "
                        f"it to finish, use another --workdir, or delete {path} if that run "
                        "is dead") from None
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  try:
    yield
  finally:
    path.unlink(missing_ok=True)


def check_resumed_config(saved_json: str, config) -> list[str]:
  """The fields of `config` that differ from the saved run's (`config.json`) and matter to
  training. Raises `ConfigError` naming them unless `config.train.resume_with_changes`;
  returns them so the caller can log the change."""
  saved = flat_fields(json.loads(saved_json))
  current = flat_fields(json.loads(config.to_json_best_effort()))
  # A field added since the run was saved counts at its default, which is what the run used.
  defaults = flat_fields(json.loads(base_config().to_json_best_effort()))
  value = lambda flat, k: flat[k] if k in flat else defaults.get(k)
  # A run saved before hub commits were recorded resumes at the commits resolved now.
  changed = sorted(k for k in saved.keys() | current.keys()
                   if value(saved, k) != value(current, k)
                   and not k.startswith(RESUMABLE_CHANGES)
                   and not (k in REVISIONS and k not in saved))
  if changed and not config.train.get("resume_with_changes", False):
    shown = "; ".join(f"config.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
    raise ConfigError(f"this workdir holds a run with another configuration ({shown}); use "
                      "another --workdir, or pass --config.train.resume_with_changes=True to "
                      "continue it under the new one")
  return changed


def check_workdir_config(workdir: Path, config) -> None:
  """`check_resumed_config` against the workdir's `config.json` when it holds checkpoints,
  logging the changes a resumed run was allowed to make."""
  saved = workdir / "config.json"
  if saved.is_file() and any(p.name.isdigit() for p in workdir.glob("checkpoints/*")):
    changed = check_resumed_config(saved.read_text(), config)
    if changed:
      log.warning("resuming under a changed configuration: %s", ", ".join(changed))


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
