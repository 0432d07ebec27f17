"""Pooled embeddings kept on disk, keyed by a fingerprint of the parameters, the texts and
the encoder settings, so an evaluation (the final training step, `eval.py` of its checkpoint,
collections sharing a corpus) encodes a corpus once."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np


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
  through `np.lib.format.open_memmap` a chunk at a time) and `NAME.rows.npy` (`[rows]`, each
  row's index among the texts). Each process writes its own pair (its share of the corpus),
  under a temporary name renamed into place when complete, vectors last: a pair is either
  whole or absent."""

  directory: Path
  name: str

  @property
  def vectors_path(self) -> Path:
    return self.directory / f"{self.name}.npy"

  @property
  def rows_path(self) -> Path:
    return self.directory / f"{self.name}.rows.npy"

  def exists(self) -> bool:
    return self.vectors_path.is_file() and self.rows_path.is_file()

  def read(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows `[m]`, vectors `[m, dim]`) `chunk` rows at a time, memory-mapped."""
    vectors = np.load(self.vectors_path, mmap_mode="r")
    rows = np.load(self.rows_path)
    for start in range(0, len(rows), chunk):
      yield rows[start:start + chunk], np.asarray(vectors[start:start + chunk])

  def write(self, size: int,
            pieces: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray,
                                                                             np.ndarray]]:
    """Passes `pieces` (rows, vectors) through, appending them to a `[size, dim]` memmap;
    renames the files into place once all `size` rows are in."""
    self.directory.mkdir(parents=True, exist_ok=True)
    # Temporary names of this process alone: two runs writing one key cannot mix their bytes.
    tmp = f".tmp{os.getpid()}.npy"
    tmp_vectors, tmp_rows = (p.with_suffix(tmp) for p in (self.vectors_path, self.rows_path))
    rows, out, filled = np.full(size, -1, np.int64), None, 0
    for piece_rows, vectors in pieces:
      if out is None:
        out = np.lib.format.open_memmap(tmp_vectors, mode="w+", dtype=np.float32,
                                        shape=(size, vectors.shape[1]))
      out[filled:filled + len(vectors)] = vectors
      rows[filled:filled + len(vectors)] = piece_rows
      filled += len(vectors)
      yield piece_rows, vectors
    if out is None or filled != size:
      return  # nothing encoded, or the plan and the encoding disagree: keep no file
    out.flush()
    del out
    np.save(tmp_rows, rows)
    tmp_rows.replace(self.rows_path)
    tmp_vectors.replace(self.vectors_path)
