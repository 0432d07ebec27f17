"""Training batches: length-bucketed global batches of a fixed shape over sharded examples,
cut from flat token arrays (`token_arrays.TokenColumn`).

Example i belongs to shard `i % num_shards`, and every shard supplies the same
`batch_size // num_shards` rows of each global batch, from its own examples. A process that
feeds some rows of every batch thus needs (tokenises, keeps) only those shards' examples; the
processes exchange each example's length (one int), so all compute the same global schedule
from the seed, the step and those lengths alone. Training uses one shard per batch row
(`training.input_pipeline.make_batches`): the same batches on any number of devices and
processes.

At each step all shards give rows of the same length bucket and the global batch is their rows
back to back, padded to that one width; so batches come from a small fixed set of shapes
(length buckets x a fixed batch size) and jit compiles a bounded number of times. Batch `step`
is a pure function of the seed, the step, the lengths and the number of shards, not of which
process holds which shards, so a resumed run sees exactly the batches the interrupted one
would have. With one shard, the schedule is the plain bucketed one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from optical_jax.files.token_arrays import TokenColumn
from optical_jax.shapes import LENGTH_BUCKETS, check_buckets


def shard_rows(num_examples: int, shard: int, num_shards: int) -> np.ndarray:
  """Row indices `[ceil((num_examples - shard) / num_shards)]` of shard `shard`: every
  `num_shards`-th row, so a file ordered by length or by source still splits evenly."""
  return np.arange(shard, num_examples, num_shards)


def as_column(column: TokenColumn | Sequence[Sequence[int]]) -> TokenColumn:
  """`column` as a `TokenColumn` (in-memory sequences are packed into one)."""
  return column if isinstance(column, TokenColumn) else TokenColumn.from_sequences(column)


def longest(columns: Mapping[str, TokenColumn | Sequence[np.ndarray]]) -> np.ndarray:
  """int32 `[rows]`: each row's longest column in tokens (what decides its bucket)."""
  return np.max([as_column(c).lengths for c in columns.values()], axis=0).astype(
      np.int32).reshape(-1)


def row_buckets(lengths: np.ndarray, max_length: int,
                length_buckets: Sequence[int] = LENGTH_BUCKETS) -> np.ndarray:
  """int32 `[rows]`: the padded width of each row of `lengths` tokens, `bucket_for` of each
  (the smallest bucket holding it, capped at `max_length`), for millions of rows at once."""
  edges = np.asarray(length_buckets)
  index = np.searchsorted(edges, np.asarray(lengths))  # the first bucket >= the length
  widths = np.where(index < len(edges), edges[np.minimum(index, len(edges) - 1)], max_length)
  return np.minimum(widths, max_length).astype(np.int32)


def epoch_schedule(buckets: np.ndarray, *, num_shards: int, rows_per_shard: int, seed: int,
                   epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """One epoch's global batches: row indices `[steps, num_shards, rows_per_shard]` (entry
  `[t, s]` holds rows of shard s only) and each batch's width `[steps]`.

  `buckets` `[num_examples]` is every row's padded width. The epoch shuffles all rows with
  `(seed, epoch)`; for each bucket, narrowest first, each shard's rows of that bucket (in
  shuffled order) are cut into local batches, as many per shard as the thinnest shard can
  fill, and the shards' k-th local batches form one global batch. A shard's rows beyond the
  thinnest shard's count move up to the next bucket (they fit a wider batch), so unequal
  shards lose almost no rows; the few rows that cannot fill a batch wait for the next
  epoch's shuffle. The counts depend only on the buckets, so every epoch has the same number
  of steps. The batch order is shuffled. With one shard nothing moves up: the plain bucketed
  schedule.
  """
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(buckets))
  widths = np.unique(buckets)
  # Group the shuffled rows by (bucket, shard), keeping the shuffled order inside each group.
  key = np.searchsorted(widths, buckets[order]) * num_shards + order % num_shards
  grouped = order[np.argsort(key, kind="stable")]
  counts = np.bincount(key, minlength=len(widths) * num_shards)
  ends = np.cumsum(counts)
  starts = ends - counts
  carried = [grouped[:0]] * num_shards
  blocks, block_widths = [], []
  for b, width in enumerate(widths):
    groups = range(b * num_shards, (b + 1) * num_shards)
    pools = [np.concatenate([carried[s], grouped[starts[g]:ends[g]]])
             for s, g in enumerate(groups)]
    common = min(len(p) for p in pools)
    steps = common // rows_per_shard
    blocks.append(np.stack([p[:steps * rows_per_shard].reshape(steps, rows_per_shard)
                            for p in pools], axis=1))
    block_widths.append(np.full(steps, width, np.int32))
    carried = [p[common:] for p in pools]  # beyond the thinnest shard: try a wider bucket
  batches, batch_widths = np.concatenate(blocks), np.concatenate(block_widths)
  shuffle = rng.permutation(len(batches))
  return batches[shuffle], batch_widths[shuffle]


class BucketedBatches:
  """Deterministic, length-bucketed global batches, of which this process holds the rows of its
  shards (see the module docstring and `epoch_schedule`).

  Args:
    columns: name -> token ids (`TokenColumn`, or unpadded int sequences) of this process's
      rows: the rows of `shards`, shard after shard, each shard's in row order (`shard_rows`).
      An example is one row across the columns (e.g. student text and teacher text).
    pad_ids: name -> the pad token id of that column.
    batch_size: the global batch size, split evenly over the `num_shards` shards.
    max_length: the widest bucket; the widths are `length_buckets` capped at it: finer ones
      pad less and compile the step more often.
    seed: the shuffles' seed.
    lengths: int `[num_examples]`, every row's longest column in tokens (`longest`), all
      shards' rows: the processes exchange them. Default: those of `columns`, which must then
      hold every shard.
    num_shards: how many shards the examples are dealt to (training: one per batch row).
    shards: this process's shards, in the order its devices take their rows of a batch.

  `batch(step)` returns this process's part of global batch `step`: `{f"{name}_ids",
  f"{name}_mask"}` for each column, int32 `[len(shards) * batch_size // num_shards, width]`.
  """

  def __init__(self, columns: Mapping[str, TokenColumn | Sequence[np.ndarray]],
               pad_ids: dict[str, int], *,
               batch_size: int, max_length: int, seed: int,
               length_buckets: Sequence[int] = LENGTH_BUCKETS,
               lengths: np.ndarray | None = None, num_shards: int = 1,
               shards: Sequence[int] = (0,)):
    columns = {name: as_column(c) for name, c in columns.items()}
    sizes = {len(c) for c in columns.values()}
    if len(sizes) != 1:
      raise ValueError(f"columns have different lengths: { {k: len(v) for k, v in columns.items()} }")
    shards = [int(s) for s in shards]
    if not shards or len(set(shards)) != len(shards) or not all(
        0 <= s < num_shards for s in shards):
      raise ValueError(f"shards {shards} must be distinct shards of 0..{num_shards - 1}")
    if batch_size % num_shards:
      raise ValueError(f"batch size {batch_size} does not split into {num_shards} shards")
    local = longest(columns)
    if lengths is None and len(shards) != num_shards:
      raise ValueError("with only some shards in columns, pass every row's lengths")
    num_examples = len(local) if lengths is None else len(lengths)
    mine = [shard_rows(num_examples, s, num_shards) for s in shards]
    if sum(map(len, mine)) != len(local):
      raise ValueError(f"columns hold {len(local)} rows; shards {shards} of {num_examples} rows "
                       f"have {sum(map(len, mine))}")
    if lengths is None:
      lengths = np.empty(num_examples, np.int32)
      lengths[np.concatenate(mine)] = local
    elif not np.array_equal(np.asarray(lengths)[np.concatenate(mine)], local):
      raise ValueError("lengths disagree with those of this process's rows")
    if num_examples < batch_size:
      raise ValueError(f"{num_examples} examples are fewer than one batch of {batch_size}")
    self.columns, self.pad_ids, self.shards = columns, pad_ids, shards
    self.num_examples, self.num_shards = num_examples, num_shards
    self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
    self.rows_per_shard = batch_size // num_shards
    # Where each of this process's shards starts in `columns`, by shard.
    self._start = np.zeros(num_shards, np.int64)
    self._start[shards] = np.concatenate([[0], np.cumsum([len(m) for m in mine])[:-1]])
    self.buckets = row_buckets(lengths, max_length, check_buckets(length_buckets))
    self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None  # one epoch kept
    self.steps_per_epoch = len(self._epoch(0)[0])  # the same for every epoch (epoch_schedule)
    if not self.steps_per_epoch:
      raise ValueError(f"no length bucket holds {self.rows_per_shard} rows of each of "
                       f"{num_shards} shard(s): not one full batch of {batch_size}")

  @property
  def shapes(self) -> list[int]:
    """The sequence lengths batches can have (one compilation each)."""
    return sorted(set(self.buckets.tolist()))

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    # Only the current epoch is kept: a long run would otherwise hold every epoch's indices.
    if self._last is None or self._last[0] != epoch:
      self._last = epoch, epoch_schedule(self.buckets, num_shards=self.num_shards,
                                         rows_per_shard=self.rows_per_shard, seed=self.seed,
                                         epoch=epoch)
    return self._last[1]

  def _lookup(self, step: int) -> tuple[np.ndarray, int]:
    epoch, i = divmod(step, self.steps_per_epoch)
    rows, widths = self._epoch(epoch)
    return rows[i], int(widths[i])

  def indices(self, step: int) -> np.ndarray:
    """Example indices `[num_shards, batch_size // num_shards]` of global batch `step`: row s
    holds shard s's examples, its rows of the batch."""
    return self._lookup(step)[0]

  def width(self, step: int) -> int:
    """The padded length of global batch `step`, the same on every shard."""
    return self._lookup(step)[1]

  def local_rows(self, step: int) -> tuple[np.ndarray, int]:
    """Positions in `columns` `[len(shards) * batch_size // num_shards]` of this process's
    rows of global batch `step` (its shards' rows, shard after shard), and the batch's width:
    one schedule look-up for all a step needs."""
    rows, width = self._lookup(step)
    mine = rows[self.shards].reshape(-1)
    return self._start[mine % self.num_shards] + mine // self.num_shards, width

  def pad(self, positions: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """The rows at `positions` in `columns`, padded: `{f"{name}_ids", f"{name}_mask"}`, int32
    `[len(positions), width]`."""
    out = {}
    for name, column in self.columns.items():
      out[f"{name}_ids"], out[f"{name}_mask"] = column.pad(positions, width, self.pad_ids[name])
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`, padded to the batch's width (`pad`)."""
    return self.pad(*self.local_rows(step))
