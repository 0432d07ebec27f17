"""Training batches: token ids cached on disk, length-bucketed batches of a fixed shape.

Batches come from a small fixed set of shapes (length buckets x a fixed batch size), so jit
compiles a bounded number of times, and batch `step` is a pure function of the seed and the
step, so a resumed run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from optical_jax.shapes import LENGTH_BUCKETS, bucket_for, check_buckets, pad_sequences


def tokenize_cached(tokenizer: Any, texts: Sequence[str], *, max_length: int,
                    cache_dir: str | Path | None, tag: str) -> list[np.ndarray]:
  """Token ids of each text (truncated, unpadded), cached on disk by content hash."""
  key = hashlib.sha256(json.dumps([tag, max_length, list(texts)]).encode()).hexdigest()[:20]
  path = Path(cache_dir) / f"tokens-{key}.npz" if cache_dir else None
  if path is not None and path.is_file():
    with np.load(path) as stored:
      flat, offsets = stored["flat"], stored["offsets"]
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
  ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
  arrays = [np.asarray(x, np.int32) for x in ids]
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # processes sharing the cache
    np.savez(tmp, flat=flat, offsets=offsets)
    tmp.replace(path)
  return arrays


class BucketedBatches:
  """Deterministic, length-bucketed batches over tokenised columns.

  Each example is a tuple of token-id arrays (one per column, e.g. student text and teacher
  text). An epoch shuffles examples with `(seed, epoch)`, groups them by the bucket of their
  longest column, cuts full batches (a bucket's remainder waits for the next epoch's
  shuffle), and shuffles the batch order. `batch(step)` returns the padded arrays of that
  step: `{f"{name}_ids", f"{name}_mask"}` for each column, shape `[batch_size, bucket]`.
  The buckets are `length_buckets` capped at `max_length`: finer ones pad less and compile
  the step more often.
  """

  def __init__(self, columns: dict[str, list[np.ndarray]], pad_ids: dict[str, int], *,
               batch_size: int, max_length: int, seed: int,
               length_buckets: Sequence[int] = LENGTH_BUCKETS):
    sizes = {len(c) for c in columns.values()}
    if len(sizes) != 1:
      raise ValueError(f"columns have different lengths: { {k: len(v) for k, v in columns.items()} }")
    self.columns, self.pad_ids = columns, pad_ids
    self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
    self.num_examples = sizes.pop()
    longest = np.max([[len(x) for x in column] for column in columns.values()], axis=0)
    length_buckets = check_buckets(length_buckets)
    self.buckets = np.array([bucket_for(int(n), max_length, length_buckets) for n in longest])
    self._epochs: dict[int, list[np.ndarray]] = {}
    if self.num_examples < batch_size:
      raise ValueError(f"{self.num_examples} examples are fewer than one batch of {batch_size}")

  @property
  def shapes(self) -> list[int]:
    """The sequence lengths batches can have (one compilation each)."""
    return sorted(set(self.buckets.tolist()))

  def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
    if epoch not in self._epochs:
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(self.num_examples)
      batches = []
      for bucket in self.shapes:
        members = order[self.buckets[order] == bucket]
        usable = len(members) - len(members) % self.batch_size
        batches += list(members[:usable].reshape(-1, self.batch_size))
      self._epochs[epoch] = [batches[i] for i in rng.permutation(len(batches))]
    return self._epochs[epoch]

  @property
  def steps_per_epoch(self) -> int:
    return len(self._epoch_batches(0))

  def indices(self, step: int) -> np.ndarray:
    """Example indices of batch `step` (epochs may differ slightly in batch count)."""
    epoch = 0
    while step >= len(self._epoch_batches(epoch)):
      step -= len(self._epoch_batches(epoch))
      epoch += 1
    return self._epoch_batches(epoch)[step]

  def width(self, step: int) -> int:
    """The padded length of batch `step`: the bucket of its longest example."""
    return int(self.buckets[self.indices(step)].max())

  def local_indices(self, step: int, part: int = 0, parts: int = 1) -> np.ndarray:
    """Part `part` of `parts` equal parts of batch `step`'s indices: the rows one of `parts`
    processes feeds (the batch size must divide evenly)."""
    if self.batch_size % parts:
      raise ValueError(f"batch size {self.batch_size} does not split into {parts} parts")
    rows = self.batch_size // parts
    return self.indices(step)[part * rows:(part + 1) * rows]

  def batch(self, step: int, part: int = 0, parts: int = 1) -> dict[str, np.ndarray]:
    """The padded arrays of batch `step` (of its part `part` of `parts`, see
    `local_indices`), padded to the whole batch's width."""
    index, width = self.local_indices(step, part, parts), self.width(step)
    out = {}
    for name, column in self.columns.items():
      out[f"{name}_ids"], out[f"{name}_mask"] = pad_sequences(
          [column[i] for i in index], width, self.pad_ids[name])
    return out
