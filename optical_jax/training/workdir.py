"""What guards a workdir: one run at a time (a `flock` on a file naming host and pid), the same
configuration on resume, and a clean stop on Ctrl-C or SIGTERM (preemption)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
from pathlib import Path

from optical_jax.config import REVISIONS, ConfigError, defaults, flat_fields, resumable_fields
from optical_jax.files.layout import Workdir

log = logging.getLogger("optical_jax")

# Fields a resumed run may change freely (the schema's resumable ones): they do not change what
# is trained.
RESUMABLE_CHANGES = resumable_fields()


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


def _holder(fd: int) -> dict:
  """Who the lock file open at `fd` names (`{}` when it names no one)."""
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    holder = json.loads(os.read(fd, 4096) or b"{}")
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _take(path: Path) -> int | None:
  """A descriptor of `path` holding its `flock`, or None while another process holds it. The
  file is the one at `path` when taken: one a releasing run unlinked meanwhile is not."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return None
    except BaseException:
      os.close(fd)
      raise
    try:
      same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)  # released and unlinked by its holder as we took it: take the new one


@contextlib.contextmanager
def workdir_lock(workdir: Path, *, enabled: bool = True):
  """Holds `workdir/.lock` while the block runs: an exclusive `flock` on the file, which
  names host and pid. The kernel drops the lock of a process that dies, so a lock left by a
  killed run is taken over (with a message naming it); a live run's is refused. On release
  the file is removed only while it is still this run's."""
  if not enabled:
    yield
    return
  path = Workdir(workdir).lock
  me = {"host": socket.gethostname(), "pid": os.getpid()}
  try:
    fd = _take(path)
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
      raise
    log.warning("%s: this filesystem cannot lock files (%s); make sure no other run uses %s",
                path, e.strerror, workdir)
    yield
    return
  if fd is None:
    holder = {}
    with contextlib.suppress(OSError), open(path, "rb") as f:
      holder = _holder(f.fileno())
    raise WorkdirBusy(f"{workdir} is in use by another run (pid {holder.get('pid')} on "
                      f"{holder.get('host')}); wait for it to finish or use another --workdir")
  try:
    left = _holder(fd)
    if left.get("pid") is not None and left != me:
      log.warning("taking over %s: its run (pid %s on %s) is no longer running", path,
                  left.get("pid"), left.get("host"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
        os.unlink(path)  # still ours: we hold its lock, so no one else took it meanwhile
    os.close(fd)


def check_resumed_config(saved_json: str, config) -> list[str]:
  """The fields of `config` that differ from the saved run's (`config.json`) and matter to
  training. Raises `ConfigError` naming them unless `config.train.resume_with_changes`;
  returns them so the caller can log the change."""
  saved = flat_fields(json.loads(saved_json))
  current = flat_fields(json.loads(config.to_json_best_effort()))
  # A field added since the run was saved counts at its default, which is what the run used.
  default = json.loads(json.dumps(defaults()))  # as JSON holds them (tuples as lists)
  value = lambda flat, k: flat[k] if k in flat else default.get(k)
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
  saved = Workdir(workdir).config
  if saved.is_file() and any(p.name.isdigit() for p in Workdir(workdir).checkpoints.glob("*")):
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
