"""Inverse document frequency of token ids over a set of rows: OT marginals that give the
mass to words rather than to "the", "and" and commas, which every verse has
(`config.ot.marginals`; the adapted vocabulary's alignment plans)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from optical_jax.files.token_arrays import TokenColumn


def document_frequencies(rows: TokenColumn | Iterable[np.ndarray], vocab_size: int, *,
                         chunk: int = 65536) -> np.ndarray:
  """int64 `[vocab_size]`: how many of `rows` (a `TokenColumn`, or 1-D arrays of token ids)
  hold each id; `chunk` rows at a time, so millions of rows need a few MB.

  >>> document_frequencies([np.array([5, 5, 7]), np.array([5, 8])], 10)[[5, 7, 8, 9]]
  array([2, 1, 1, 0])
  """
  column = rows if isinstance(rows, TokenColumn) else TokenColumn.from_sequences(
      [np.asarray(r, np.int64) for r in rows], np.int64)
  df = np.zeros(vocab_size, np.int64)
  for start in range(0, len(column), chunk):
    positions = np.arange(start, min(start + chunk, len(column)))
    width = int(column.lengths[positions].max(initial=0))
    index, mask = column.gather(positions, width)
    ids = np.asarray(column.flat[index[mask]], np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
      raise ValueError(f"token ids must lie in [0, {vocab_size}); got {ids.min()}..{ids.max()}")
    row = np.nonzero(mask)[0]  # each id's row, so an id counts once per row
    df += np.bincount(np.unique(row * vocab_size + ids) % vocab_size, minlength=vocab_size)
  return df


def idf_table(df: np.ndarray, num_rows: int) -> np.ndarray:
  """float32 `[vocab]`: `log((n + 1) / (df + 1))` per token id over `num_rows` rows (0 for an
  id every row holds, such as [CLS]).

  >>> idf_table(np.array([2, 1, 0]), 2).round(3)
  array([0.   , 0.405, 1.099], dtype=float32)
  """
  return np.log((num_rows + 1) / (np.asarray(df, np.float64) + 1)).astype(np.float32)
