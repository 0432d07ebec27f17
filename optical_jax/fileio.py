"""Files written whole or not at all: a reader, a crash or a full disk leaves the old content
or the new one, never a truncated mix (`config.json`, `eval.json`, run files).

Standard library only, so any module may import it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator


def temporary_sibling(path: str | os.PathLike, kind: str = "tmp") -> Path:
  """`NAME.tmp<PID>` beside `path`: in the same directory, so a rename replaces `path`
  atomically; named with the pid, so two processes never share one."""
  path = Path(path)
  return path.with_name(f"{path.name}.{kind}{os.getpid()}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
  """A text file to write `path` through: it becomes `path` (flushed to disk, then renamed
  over it) only when the block ends without an error; otherwise it is removed and `path` is
  left as it was."""
  path = Path(path)
  tmp = temporary_sibling(path)
  try:
    with open(tmp, "w", encoding=encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # the data on disk before the name points at it
    os.replace(tmp, path)
  except BaseException:  # Ctrl-C included: no half-written temporary left behind
    tmp.unlink(missing_ok=True)
    raise
  _sync_directory(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
  """Writes `text` to `path` through a temporary file in the same directory (pid in its
  name), fsync and `os.replace`. Returns `path` as a `Path`."""
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
