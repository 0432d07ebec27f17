"""What the on-disk caches (embeddings, corpus scans, token ids, builds) share: temporary
names that say which process on which host writes them (`fileio.temporary`), a sweep of those
whose process is gone (names of that form only, never one a user chose), `.npy` files checked
against their header before they are trusted, broken entries set aside with a warning, and a
full disk or file-size limit as one line naming the file (`CacheWriteError`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np

# `temporary`: what every cache writes under before its rename (defined in `fileio`).
from optical_jax.files.fileio import TEMPORARY_NAME, host_tag, temporary  # noqa: F401

log = logging.getLogger("optical_jax")

# A temporary entry not written to for this long is dead whoever wrote it (another host's, or
# this host's under another name: containers get new host names).
STALE_SECONDS = 24 * 3600
_swept: set[tuple[str, str | None]] = set()  # (directory, of) swept by this process


class CacheWriteError(OSError):
  """A cache file that could not be written (a full disk, a file-size limit or quota); the
  message names the file and how to go on (`errno` and `filename` are set too)."""

  def __str__(self) -> str:
    return str(self.args[0])


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  except OSError:
    return False
  return True


def _last_written(path: Path) -> float:
  if path.is_dir():
    times = [p.stat().st_mtime for p in path.iterdir()] + [path.stat().st_mtime]
    return max(times)
  return path.stat().st_mtime


def sweep_temporaries(directory: Path, *, of: str | None = None) -> list[Path]:
  """Removes the temporaries (`fileio.temporary`'s `.optical-tmp-<PID>-<HOST>-...` names,
  nothing else) in `directory` of processes that are gone: this host's whose process is not
  alive, and any not written for `STALE_SECONDS`. `of`: only those of that one name (in a
  directory the user chose, a workdir or the cache's top). Once per directory per process
  (the first time a cache there is opened). Links are left alone. Returns what was removed."""
  directory = Path(directory)
  if (str(directory), of) in _swept or not directory.is_dir():
    return []
  _swept.add((str(directory), of))
  removed, mine, now = [], host_tag(), time.time()
  for entry in directory.iterdir():
    match = TEMPORARY_NAME.match(entry.name)
    if match is None or (of is not None and match.group(3) != of) or entry.is_symlink():
      continue
    pid, host = int(match.group(1)), match.group(2)
    try:
      dead = ((host == mine and pid != os.getpid() and not _alive(pid))
              or now - _last_written(entry) > STALE_SECONDS)
      if dead:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        removed.append(entry)
    except OSError:
      continue  # gone meanwhile, or not ours to remove
  if removed:
    log.info("%s: removed %d temporary file(s) of processes that ended before finishing "
             "them", directory, len(removed))
  return removed


def remove(path: Path) -> None:
  """Deletes a file or directory if it is there."""
  with contextlib.suppress(FileNotFoundError):
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def set_aside(paths, reason: str, what: str) -> None:
  """Deletes a broken cache entry (its files `paths`), with a warning line naming the first
  file and why it was not trusted."""
  paths = list(paths)
  log.warning("%s: broken %s (%s); removed, computing it again", paths[0], what, reason)
  for path in paths:
    remove(Path(path))


class BrokenCache(ValueError):
  """A cache file whose content does not hold together; the message says why."""


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
  """(shape, dtype, data offset) of an `.npy` file, checked: a readable header, C order, and
  a file size that is exactly the header plus the array's bytes (a truncated or extended
  file is `BrokenCache`)."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read(f)
      offset = f.tell()
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise BrokenCache(f"unreadable .npy header: {e}") from None
  if fortran:
    raise BrokenCache("Fortran-ordered array")
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if size != expected:
    raise BrokenCache(f"{size} bytes where its header {shape} {dtype} implies {expected}")
  return tuple(shape), dtype, offset


def reserve(f, size: int) -> None:
  """Allocates `size` bytes for the open file `f` now, so that a full disk is an error at the
  start (where the filesystem can tell), not a failed write half way."""
  if not hasattr(os, "posix_fallocate"):
    return
  try:
    os.posix_fallocate(f.fileno(), 0, size)
  except OSError as e:
    if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
      return  # this filesystem cannot reserve; writes still report a full disk
    raise


_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def writing(path: Path, what: str, *, hint: str = "", cleanup=()) -> Iterator[None]:
  """Turns a full disk, a file-size limit or a quota while writing `path` into one
  `CacheWriteError` line naming the file (and `hint`: how to go without the cache); the
  partial files `cleanup` are removed first, so the space comes back. Other errors pass as
  they are."""
  try:
    yield
  except OSError as e:
    if isinstance(e, CacheWriteError) or e.errno not in _FULL:
      raise
    for partial in cleanup:
      remove(Path(partial))
    error = CacheWriteError(f"{path}: cannot write the {what} ({os.strerror(e.errno)}); free "
                            "space there, or point runtime.cache_dir elsewhere"
                            + (f", or {hint}" if hint else ""))
    error.errno, error.filename = e.errno, str(path)
    raise error from None
