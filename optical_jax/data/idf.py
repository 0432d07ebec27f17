"""Inverse document frequency of token ids over a set of rows: OT marginals that give the
mass to words rather than to "the", "and" and commas, which every verse has
(`config.ot.marginals`; the adapted vocabulary's alignment plans)."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def document_frequencies(rows: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
  """int64 `[vocab_size]`: how many of `rows` (each a 1-D array of token ids) hold each id.

  >>> document_frequencies([np.array([5, 5, 7]), np.array([5, 8])], 10)[[5, 7, 8, 9]]
  array([2, 1, 1, 0])
  """
  rows = [np.unique(np.asarray(ids, np.int64)) for ids in rows]
  flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
  if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
    raise ValueError(f"token ids must lie in [0, {vocab_size}); got {flat.min()}..{flat.max()}")
  return np.bincount(flat, minlength=vocab_size).astype(np.int64)


def idf_table(df: np.ndarray, num_rows: int) -> np.ndarray:
  """float32 `[vocab]`: `log((n + 1) / (df + 1))` per token id over `num_rows` rows (0 for an
  id every row holds, such as [CLS]).

  >>> idf_table(np.array([2, 1, 0]), 2).round(3)
  array([0.   , 0.405, 1.099], dtype=float32)
  """
  return np.log((num_rows + 1) / (np.asarray(df, np.float64) + 1)).astype(np.float32)
