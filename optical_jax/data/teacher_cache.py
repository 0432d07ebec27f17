"""The frozen teacher's token embeddings, computed once per training pair and kept on disk.

The teacher never changes during distillation, so encoding the English side of a pair again in
every epoch, in a resumed run, or in each of the demo's runs over the same batches is wasted
work (about a sixth of a MiniLM step on CPU). `TeacherTokenCache.lookup` returns a batch's
teacher token embeddings; when the batch holds pairs not seen before, it encodes the batch as
the train step would have, so a first pass costs what encoding inside the step does.

On disk, under `directory/teacher-tokens-<key>/` (the key hashes the checkpoint, the compute
dtype, the attention kernel and the token ids, so a different teacher, precision, text or
truncation never reads stale vectors):
- `tokens.npy`: float32 `[total tokens, hidden]`, one row per real token, pairs back to back
  (a sparse file: space is used only for the pairs encoded so far);
- `done.npy`: bool `[pairs]`, written after the vectors it vouches for, so a run killed
  mid-write recomputes those pairs instead of reading garbage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np


class TeacherTokenCache:
  """Token embeddings `[length, hidden]` of each teacher-side text, computed on first use.

  Args:
    encoder: the frozen teacher (`optical_jax.hf_checkpoint.LoadedEncoder`).
    token_ids: the teacher-side token ids of every pair this process feeds (unpadded int
      arrays; `BucketedBatches.columns`), which `lookup` indexes by position.
    directory: where the cache lives (shared by all runs that use the same teacher and text).
  """

  def __init__(self, encoder: Any, token_ids: Sequence[np.ndarray], directory: str | Path):
    self.encoder = encoder
    lengths = np.array([len(x) for x in token_ids], np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(lengths)])
    hidden = encoder.config.hidden_size
    digest = hashlib.sha256()
    # The compute dtype and the attention kernel change the vectors too.
    digest.update(f"{encoder.path}|{encoder.config}|{encoder.module.dtype}|"
                  f"{encoder.module.attention}".encode())
    digest.update(lengths.tobytes())
    digest.update(np.concatenate(list(token_ids)).astype(np.int32).tobytes() if len(lengths)
                  else b"")
    self.directory = Path(directory).expanduser() / f"teacher-tokens-{digest.hexdigest()[:20]}"
    self.directory.mkdir(parents=True, exist_ok=True)
    tokens_path, self._done_path = self.directory / "tokens.npy", self.directory / "done.npy"
    shape = (int(self.offsets[-1]), hidden)
    if tokens_path.is_file() and self._done_path.is_file():
      self.tokens = np.lib.format.open_memmap(tokens_path, mode="r+")
      self.done = np.load(self._done_path)
      if self.tokens.shape != shape or self.done.shape != (len(lengths),):
        raise ValueError(f"{self.directory}: cache shapes {self.tokens.shape}, "
                         f"{self.done.shape} do not match {shape}, ({len(lengths)},); delete it")
    else:
      self.tokens = np.lib.format.open_memmap(tokens_path, mode="w+", dtype=np.float32,
                                              shape=shape)
      self.done = np.zeros(len(lengths), bool)
    self._forward = jax.jit(encoder.apply)
    self.encoded = 0  # pairs this instance had to encode (the rest were read from disk)

  def lookup(self, index: np.ndarray, teacher_ids: np.ndarray,
             teacher_mask: np.ndarray) -> np.ndarray:
    """Teacher token embeddings `[len(index), width, hidden]` (zero past each text's end) of
    the pairs `index`, whose teacher side the batch holds padded as `teacher_ids` /
    `teacher_mask` `[len(index), width]`.

    If some pairs are not cached yet, the teacher encodes that padded batch (the forward the
    train step would have run) and its new rows are stored.
    """
    index = np.asarray(index)
    width = teacher_ids.shape[1]
    lengths = self.offsets[index + 1] - self.offsets[index]
    if lengths.max() > width:
      raise ValueError(f"a teacher text of {lengths.max()} tokens does not fit width {width}")
    missing = ~self.done[index]
    if missing.any():
      hidden = np.asarray(jax.device_get(
          self._forward(self.encoder.params, teacher_ids, teacher_mask)), np.float32)
      for row in np.flatnonzero(missing):
        self.tokens[self.offsets[index[row]]:self.offsets[index[row] + 1]] = \
            hidden[row, :lengths[row]]
      self.tokens.flush()
      self.done[index[missing]] = True
      tmp = self._done_path.with_suffix(".tmp.npy")
      np.save(tmp, self.done)
      tmp.replace(self._done_path)
      self.encoded += int(missing.sum())
    out = np.zeros((len(index), width, self.tokens.shape[1]), np.float32)
    for row, i in enumerate(index):
      out[row, :lengths[row]] = self.tokens[self.offsets[i]:self.offsets[i + 1]]
    return out
