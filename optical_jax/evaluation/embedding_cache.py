"""Pooled embeddings kept on disk, keyed by a fingerprint of the parameters, the texts and
the encoder settings, so an evaluation (the final training step, `eval.py` of its checkpoint,
collections sharing a corpus) encodes a corpus once."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from optical_jax.files.cache_files import (BrokenCache, npy_header, remove, reserve, set_aside,
                                           sweep_temporaries, temporary, writing)


def params_fingerprint(params: Any) -> str:
  """A digest of every parameter's path, dtype, shape and bytes: the same weights (a final
  training step and its restored checkpoint) give the same key."""
  h = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    array = np.ascontiguousarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
    h.update(array.view(np.uint8).reshape(-1).data)
  return h.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
  """A digest of the texts in order."""
  h = hashlib.sha256()
  for text in texts:
    h.update(text.encode("utf-8"))
    h.update(b"\0")
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class EmbeddingCache:
  """Pooled embeddings one process encoded, on disk: `NAME.npy` (`[rows, dim]` float32, written
  a chunk at a time) and `NAME.rows.npy` (`[rows]`, each row's index among the texts). Each
  process writes its own pair (its share of the corpus), under temporary names of its own
  (`cache_files.temporary`) renamed into place when complete, vectors last: a pair is either
  whole or absent. Files are checked against their headers before they are trusted; a broken
  pair is removed with a warning and encoded again."""

  directory: Path
  name: str

  def __post_init__(self):
    # Temporaries of runs that were killed would otherwise stay forever (gigabytes each).
    sweep_temporaries(Path(self.directory))

  @property
  def vectors_path(self) -> Path:
    return self.directory / f"{self.name}.npy"

  @property
  def rows_path(self) -> Path:
    return self.directory / f"{self.name}.rows.npy"

  def exists(self) -> bool:
    return self.vectors_path.is_file() and self.rows_path.is_file()

  def problem(self, size: int, num_texts: int) -> str | None:
    """Why the pair cannot be trusted for `size` rows of `num_texts` texts, or None: sizes
    against headers, the vectors' and rows' shapes and dtypes, every row index in range."""
    try:
      shape, dtype, _ = npy_header(self.vectors_path)
    except BrokenCache as e:
      return f"{self.vectors_path.name}: {e}"
    if len(shape) != 2 or shape[0] != size or dtype != np.float32:
      return f"{self.vectors_path.name}: {dtype} {shape}, expected float32 [{size}, dim]"
    try:
      rows_shape, rows_dtype, _ = npy_header(self.rows_path)
      rows = np.load(self.rows_path)
    except (BrokenCache, OSError, ValueError) as e:
      return f"{self.rows_path.name}: {e}"
    if rows_shape != (size,) or rows_dtype != np.int64:
      return f"{self.rows_path.name}: {rows_dtype} {rows_shape}, expected int64 [{size}]"
    if size and (rows.min() < 0 or rows.max() >= num_texts):
      return f"{self.rows_path.name}: row indices outside 0..{num_texts - 1}"
    return None

  def usable(self, size: int, num_texts: int) -> bool:
    """Whether the pair is here and sound; a broken pair is removed (with a warning) so that
    it is encoded again."""
    if not self.exists():
      return False
    problem = self.problem(size, num_texts)
    if problem is None:
      return True
    set_aside([self.vectors_path, self.rows_path], problem, "embedding cache entry")
    return False

  def read(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows `[m]`, vectors `[m, dim]`) `chunk` rows at a time, memory-mapped."""
    vectors = np.load(self.vectors_path, mmap_mode="r")
    rows = np.load(self.rows_path)
    for start in range(0, len(rows), chunk):
      yield rows[start:start + chunk], np.asarray(vectors[start:start + chunk])

  def write(self, size: int,
            pieces: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray,
                                                                             np.ndarray]]:
    """Passes `pieces` (rows, vectors) through, appending them to a `[size, dim]` file;
    renames the files into place once all `size` rows are in. The file's space is reserved
    when the first piece comes, and a full disk or file-size limit is a `CacheWriteError`
    naming the file (its partial files removed)."""
    tmp_vectors, tmp_rows = temporary(self.vectors_path), temporary(self.rows_path)
    rows, out, filled, done = np.full(size, -1, np.int64), None, 0, False
    hint = "set eval.embedding_cache=False"
    try:
      for piece_rows, vectors in pieces:
        vectors = np.ascontiguousarray(vectors, np.float32)
        filled += len(vectors)
        if filled <= size:  # beyond: the plan and the encoding disagree, nothing is kept
          with writing(self.vectors_path, "embedding cache", hint=hint, cleanup=[tmp_vectors]):
            if out is None:
              self.directory.mkdir(parents=True, exist_ok=True)
              # Plain writes, not a memmap: a full disk is an error, never a SIGBUS.
              out = open(tmp_vectors, "wb")
              np.lib.format.write_array_header_1_0(out, {
                  "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                  "fortran_order": False, "shape": (size, vectors.shape[1])})
              reserve(out, out.tell() + size * vectors.shape[1] * 4)
            out.write(vectors.tobytes())
          rows[filled - len(vectors):filled] = piece_rows
        yield piece_rows, vectors
      if out is None or filled != size:
        return  # nothing encoded, or the plan and the encoding disagree: keep no file
      with writing(self.vectors_path, "embedding cache", hint=hint,
                   cleanup=[tmp_vectors, tmp_rows]):
        out.close()
        with open(tmp_rows, "wb") as f:
          np.save(f, rows)
      tmp_rows.replace(self.rows_path)
      tmp_vectors.replace(self.vectors_path)
      done = True
    finally:
      if out is not None:
        with contextlib.suppress(OSError):  # a failed write was reported already
          out.close()
      if not done:
        remove(tmp_vectors)
        remove(tmp_rows)
