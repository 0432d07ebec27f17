"""The frozen teacher's token embeddings, computed once per training pair and kept on disk.

On CPU the teacher's forward is about a sixth of a MiniLM step, and encoding the English side
of a pair again in every epoch, in a resumed run, or in each of the demo's runs over the same
batches is wasted work; `TeacherTokenCache.lookup` returns a batch's teacher token embeddings,
and when the batch holds pairs not seen before it encodes the batch as the train step would
have, so a first pass costs what encoding inside the step does. (On accelerators the forward
is cheaper than reading and shipping the vectors: the train step runs it instead.)

On disk, under `directory/teacher-tokens-<key>/` (the key hashes the teacher's weight files'
content, its config, compute dtype and attention kernel, and the token ids, so another
teacher, precision, text or truncation never reads stale vectors):
- `tokens.npy`: `[total tokens, hidden]` in the compute dtype (bfloat16 as its uint16 bits),
  one row per real token, pairs back to back; its space is reserved when it is created, so a
  full disk fails then, in one line, never as a bus error in the middle of training;
- `done.npy`: bool `[pairs]`, written after the vectors it vouches for, so a run killed
  mid-write recomputes those pairs instead of reading garbage.

A cache whose files do not match their expected sizes (truncated, or from another version)
is removed and rebuilt, with a warning; a vouched-for pair whose first or last token vector is
all zeros (a hole in the file) is encoded again. Files are created under temporary names and
renamed, under a lock, so no run maps a file another run truncates; a full disk or file-size
limit is one line naming the file (`cache_files.CacheWriteError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_dtypes
import numpy as np

from optical_jax.files.cache_files import (BrokenCache, npy_header, reserve, set_aside,
                                           sweep_temporaries, temporary, writing)
from optical_jax.files.fingerprint import checkpoint_digest
from optical_jax.files.token_arrays import TokenColumn

log = logging.getLogger("optical_jax")


def storage_dtype(encoder: Any) -> np.dtype:
  """The dtype the vectors are kept in: the teacher's compute dtype."""
  return np.dtype(ml_dtypes.bfloat16) if np.dtype(encoder.module.dtype) == np.dtype(
      ml_dtypes.bfloat16) else np.dtype(np.float32)


def expected_bytes(encoder: Any, column: TokenColumn) -> int:
  """What the cache of `column`'s pairs takes on disk: tokens x hidden x bytes."""
  return int(column.lengths.sum()) * encoder.config.hidden_size * storage_dtype(encoder).itemsize


@contextlib.contextmanager
def _locked(directory: Path):
  """An exclusive lock on `directory` (a lock file), across processes and runs."""
  with open(directory / ".lock", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


# How to go on without the cache, for a write that fails.
_HINT = "pass --config.data.teacher_cache=False (the teacher then runs in the train step)"


def _as_column(token_ids) -> TokenColumn:
  return token_ids if isinstance(token_ids, TokenColumn) else TokenColumn.from_sequences(
      token_ids)


class TeacherTokenCache:
  """Token embeddings `[length, hidden]` of each teacher-side text, computed on first use.

  Args:
    encoder: the frozen teacher (`optical_jax.models.loaded.LoadedEncoder`).
    token_ids: the teacher-side token ids of every pair this process feeds (a `TokenColumn`,
      `BucketedBatches.columns["teacher"]`, or unpadded int arrays), which `lookup` indexes
      by position.
    directory: where the cache lives (shared by all runs that use the same teacher and text).
  """

  def __init__(self, encoder: Any, token_ids: TokenColumn | Sequence[np.ndarray],
               directory: str | Path):
    self.encoder = encoder
    column = _as_column(token_ids)
    self.offsets = np.concatenate([[0], np.cumsum(column.lengths.astype(np.int64))])
    self.dtype = storage_dtype(encoder)
    self.directory = self.location(encoder, column, directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self._tokens_path = self.directory / "tokens.npy"
    self._done_path = self.directory / "done.npy"
    self.shape = (int(self.offsets[-1]), encoder.config.hidden_size)
    with _locked(self.directory):
      sweep_temporaries(self.directory)
      problem = self._check()
      if problem:
        set_aside([self._tokens_path, self._done_path], problem, "teacher token cache")
      if not self._tokens_path.is_file():
        self._create()
      self._storage = np.lib.format.open_memmap(self._tokens_path, mode="r+")
      self.done = np.load(self._done_path)
    self._forward = jax.jit(encoder.apply)
    self.encoded = 0  # pairs this instance had to encode (the rest were read from disk)
    self.repaired = 0  # vouched-for pairs found zeroed on disk and encoded again

  @staticmethod
  def location(encoder: Any, token_ids: TokenColumn | Sequence[np.ndarray],
               directory: str | Path) -> Path:
    """The cache directory of these pairs under `directory`: `teacher-tokens-<key>`."""
    column = _as_column(token_ids)
    directory = Path(directory).expanduser()
    digest = hashlib.sha256()
    # The weights' content, the compute dtype and the attention kernel change the vectors too.
    digest.update(f"{checkpoint_digest(encoder.path, memo_dir=directory)}|{encoder.config}|"
                  f"{encoder.module.dtype}|{encoder.module.attention}|"
                  f"{storage_dtype(encoder)}".encode())
    digest.update(column.lengths.astype(np.int64).tobytes())
    if column.fingerprint:  # the ids' own key (file, tokenizer, rows) and their order here
      digest.update(column.fingerprint.encode())
      digest.update(np.asarray(column.order if column.order is not None else [], np.int64)
                    .tobytes())
    elif len(column):
      digest.update(np.concatenate(list(column)).astype(np.int32).tobytes())
    return directory / f"teacher-tokens-{digest.hexdigest()[:20]}"

  # -- files -----------------------------------------------------------------------------------

  def _check(self) -> str | None:
    """Why the files on disk cannot be trusted, or None (absent files are fine)."""
    if not self._tokens_path.is_file() and not self._done_path.is_file():
      return None
    if not (self._tokens_path.is_file() and self._done_path.is_file()):
      return "one of its two files is missing"
    try:
      shape, dtype, _ = npy_header(self._tokens_path)  # size against header: not truncated
      done = np.load(self._done_path)
    except BrokenCache as e:
      return f"tokens.npy: {e}"
    except (ValueError, OSError, EOFError) as e:
      return f"done.npy: unreadable ({e})"
    if shape != self.shape or dtype != self._disk_dtype():
      return f"shape {shape} {dtype}, expected {self.shape} {self._disk_dtype()}"
    if done.shape != (len(self.offsets) - 1,) or done.dtype != bool:
      return f"done.npy has shape {done.shape}, expected ({len(self.offsets) - 1},)"
    return None

  def _disk_dtype(self) -> np.dtype:
    return np.dtype(np.uint16) if self.dtype == np.dtype(ml_dtypes.bfloat16) else self.dtype

  def _create(self) -> None:
    """Both files, their space reserved, under temporary names renamed into place."""
    tmp, done_tmp = temporary(self._tokens_path), temporary(self._done_path)
    with writing(self._tokens_path, "teacher token cache", hint=_HINT, cleanup=[tmp, done_tmp]):
      with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {
            "descr": np.lib.format.dtype_to_descr(self._disk_dtype()), "fortran_order": False,
            "shape": self.shape})
        header = f.tell()
        size = header + self.shape[0] * self.shape[1] * self.dtype.itemsize
        f.truncate(size)
        reserve(f, size)  # real blocks, not a sparse file's holes: no SIGBUS on a full disk
      np.save(done_tmp, np.zeros(len(self.offsets) - 1, bool))
    os.replace(done_tmp, self._done_path)
    os.replace(tmp, self._tokens_path)

  def _save_done(self) -> None:
    tmp = temporary(self._done_path)
    with writing(self._done_path, "teacher token cache", hint=_HINT, cleanup=[tmp]):
      np.save(tmp, self.done)
    os.replace(tmp, self._done_path)

  @property
  def tokens(self) -> np.ndarray:
    """The vectors on disk, `[total tokens, hidden]` in the compute dtype (a memmap view)."""
    return self._storage.view(self.dtype)

  # -- lookup ----------------------------------------------------------------------------------

  def lookup(self, index: np.ndarray, teacher_ids: np.ndarray,
             teacher_mask: np.ndarray) -> np.ndarray:
    """Teacher token embeddings `[len(index), width, hidden]` in the compute dtype (zero past
    each text's end) of the pairs `index`, whose teacher side the batch holds padded as
    `teacher_ids` / `teacher_mask` `[len(index), width]`.

    If some pairs are not cached yet, the teacher encodes that padded batch (the forward the
    train step would have run) and its new rows are stored.
    """
    index = np.asarray(index, np.int64)
    width = teacher_ids.shape[1]
    starts, lengths = self.offsets[index], self.offsets[index + 1] - self.offsets[index]
    if lengths.max() > width:
      raise ValueError(f"a teacher text of {lengths.max()} tokens does not fit width {width}")
    cols = np.arange(width)
    valid = cols[None, :] < lengths[:, None]
    source = (starts[:, None] + cols[None, :])[valid]
    tokens = self.tokens
    missing = ~self.done[index]
    out = np.zeros((len(index), width, self.shape[1]), self.dtype)
    if not missing.all():
      out[valid] = tokens[source]
      # A pair vouched for but zero on disk (a hole from an older or interrupted writer).
      ends = np.maximum(lengths - 1, 0)
      rows = np.arange(len(index))
      holes = ~missing & ((out[rows, 0] == 0).all(-1) | (out[rows, ends] == 0).all(-1))
      if holes.any():
        if not self.repaired:
          log.warning("teacher token cache %s: %d cached pair(s) hold zero vectors; encoding "
                      "them again", self.directory, int(holes.sum()))
        self.repaired += int(holes.sum())
        missing |= holes
    if missing.any():
      hidden = np.asarray(jax.device_get(
          self._forward(self.encoder.params, teacher_ids, teacher_mask))).astype(self.dtype)
      new = valid & missing[:, None]
      out[new] = hidden[new]
      with writing(self._tokens_path, "teacher token cache", hint=_HINT):
        tokens[(starts[:, None] + cols[None, :])[new]] = hidden[new]
        self._storage.flush()
      self.done[index[missing]] = True
      self._save_done()
      self.encoded += int(missing.sum())
    return out
