"""Files written whole or not at all: a reader, a crash or a full disk leaves the old content
or the new one, never a truncated mix (`config.json`, `eval.json`, run files).

Every temporary the project writes is named `.optical-tmp-<PID>-<HOST>-<RANDOM>-NAME` beside
the `NAME` it becomes (`temporary`): the fixed prefix, the writer's pid and host tell a
temporary of ours beyond doubt (`cache_files.sweep_temporaries` removes only such names), and
the random part makes the name unpredictable, so a link planted in a shared directory cannot
be waiting for it. Files are created only where nothing is (`create_new`: `O_EXCL`, and
`O_NOFOLLOW`, never through a link).

Standard library only, so any module may import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from pathlib import Path
from typing import IO, Iterator

TEMPORARY_PREFIX = ".optical-tmp-"
# `.optical-tmp-<PID>-<HOST>-<RANDOM>-NAME`: groups pid, host, name.
TEMPORARY_NAME = re.compile(r"\.optical-tmp-(\d+)-([0-9a-f]{8})-[0-9a-f]{8}-(.+)\Z", re.S)
_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
           | getattr(os, "O_CLOEXEC", 0))


def host_tag() -> str:
  """8 hex digits naming this host in temporary names."""
  return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def temporary(path: str | os.PathLike) -> Path:
  """A fresh name beside `path` to write it under before renaming it into place:
  `.optical-tmp-<PID>-<HOST>-<RANDOM>-NAME` (in the same directory, so the rename is atomic;
  `NAME` last, so its suffix, `.npy` say, stays)."""
  path = Path(path)
  return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{host_tag()}-{secrets.token_hex(4)}-"
                        f"{path.name}")


def create_new(path: str | os.PathLike, mode: int = 0o666) -> int:
  """A file descriptor of a new file at `path`, open for writing: never an existing file, nor
  the target of a link at `path` (`FileExistsError` then)."""
  return os.open(path, _CREATE, mode)


def create_temporary(path: str | os.PathLike, mode: str = "w", *,
                     encoding: str | None = None) -> tuple[Path, IO]:
  """A new temporary file beside `path` (`temporary`, created with `create_new`) and its open
  file object; a name that is taken is passed over for another."""
  for _ in range(100):
    tmp = temporary(path)
    try:
      fd = create_new(tmp)
    except FileExistsError:
      continue
    return tmp, os.fdopen(fd, mode, encoding=encoding)
  raise FileExistsError(f"{path}: no free temporary name beside it")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
  """A text file to write `path` through: it becomes `path` (flushed to disk, then renamed
  over it) only when the block ends without an error; otherwise it is removed and `path` is
  left as it was."""
  path = Path(path)
  tmp = None
  try:
    tmp, f = create_temporary(path, encoding=encoding)
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # the data on disk before the name points at it
    os.replace(tmp, path)
  except BaseException:  # Ctrl-C included: no half-written temporary left behind
    if tmp is not None:
      tmp.unlink(missing_ok=True)
    raise
  _sync_directory(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
  """Writes `text` to `path` through a new temporary file in the same directory
  (`create_temporary`), fsync and `os.replace`. Returns `path` as a `Path`."""
  with atomic_writer(path, encoding=encoding) as f:
    f.write(text)
  return Path(path)


def _sync_directory(directory: Path) -> None:
  """The rename itself on disk (best effort: not every platform opens directories)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
