"""One run at a time per workdir: an exclusive `flock` on `workdir/.lock`, a file naming the
holder's host and pid. The kernel drops the lock of a process that dies, so a killed run's is
taken over; a live run's is refused in one line."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from optical_jax.files.layout import Workdir

log = logging.getLogger("optical_jax")


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
