"""Padded sequence lengths: one small fixed set, so jit compiles a bounded number of times."""

from typing import Sequence

import numpy as np

# Steps of at most 1.5x, so padding wastes at most a third of a batch (the demo bitext's mean
# padded width drops from 58.5 to 53.6 tokens against powers of two) for one more compile.
LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def bucket_for(length: int, max_length: int,
               buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
  """The smallest of `buckets` (ascending) holding `length` tokens, capped at `max_length`:
  padding to these keeps the number of compiled shapes bounded."""
  for bucket in buckets:
    if length <= bucket:
      return min(bucket, max_length)
  return max_length


def check_buckets(buckets: Sequence[int], field: str = "length_buckets") -> tuple[int, ...]:
  """`buckets` as a tuple, or a ValueError naming `field` unless they are ascending positive
  integers."""
  values = tuple(buckets)
  if (not values or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in values)
      or any(a >= b for a, b in zip(values, values[1:]))):
    raise ValueError(f"{field} must be ascending positive integers, got {buckets!r}")
  return values


def pad_sequences(sequences: Sequence[Sequence[int]], width: int, pad_id: int, *,
                  rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask, int32 `[rows, width]` (rows defaults to one per sequence;
  extra rows are all padding), each sequence cut to `width`."""
  rows = len(sequences) if rows is None else rows
  ids = np.full((rows, width), pad_id, np.int32)
  mask = np.zeros((rows, width), np.int32)
  for row, tokens in enumerate(sequences):
    tokens = tokens[:width]
    ids[row, :len(tokens)] = tokens
    mask[row, :len(tokens)] = 1
  return ids, mask
