import numpy as np
import pytest

from optical_jax.data.batching import BucketedBatches, epoch_schedule, longest, shard_rows


def random_columns(n=100, seed=1):
  rng = np.random.default_rng(seed)
  return {"student": [np.arange(1, rng.integers(2, 61)) for _ in range(n)],
          "teacher": [np.arange(1, rng.integers(2, 21)) for _ in range(n)]}


def make_batches(seed=0, n=100, batch_size=8, **options):
  return BucketedBatches(random_columns(n), {"student": 0, "teacher": 0}, batch_size=batch_size,
                         max_length=48, seed=seed, **options)


def process_batches(columns, shards, num_shards, *, batch_size=8, seed=0):
  """The batches one process of a sharded run holds: only the rows of `shards`."""
  n = len(columns["student"])
  mine = np.concatenate([shard_rows(n, s, num_shards) for s in shards])
  local = {name: [column[i] for i in mine] for name, column in columns.items()}
  return BucketedBatches(local, {"student": 0, "teacher": 0}, batch_size=batch_size,
                         max_length=48, seed=seed, lengths=longest(columns),
                         num_shards=num_shards, shards=shards)


def test_batches_are_a_pure_function_of_seed_and_step():
  a, b = make_batches(), make_batches(num_shards=4, shards=range(4))
  for step in (40, 0, 5, 11):  # 40 is past the first epoch; a resumed run starts anywhere
    for key, value in a.batch(step).items():
      np.testing.assert_array_equal(value, make_batches().batch(step)[key])
    np.testing.assert_array_equal(
        b.indices(step), make_batches(num_shards=4, shards=range(4)).indices(step))
  assert not np.array_equal(make_batches(seed=1).indices(0), a.indices(0))


def test_batches_use_a_bounded_set_of_shapes_and_cover_an_epoch_once():
  batches = make_batches()
  assert batches.shapes == [16, 32, 48]
  seen = np.concatenate([batches.indices(s).ravel() for s in range(batches.steps_per_epoch)])
  assert len(seen) == len(set(seen.tolist()))
  for step in range(batches.steps_per_epoch):
    batch = batches.batch(step)
    assert batch["student_ids"].shape[1] in batches.shapes
    assert batch["student_ids"].shape == batch["teacher_mask"].shape
    longest_text = max(batch["student_mask"].sum(1).max(), batch["teacher_mask"].sum(1).max())
    assert longest_text <= batch["student_ids"].shape[1]


def test_batches_pad_to_the_smallest_given_bucket_capped_at_max_length():
  buckets = (8, 24, 40, 56)
  batches = make_batches(length_buckets=buckets)  # max_length 48
  assert batches.shapes == [8, 24, 40, 48]
  for step in range(batches.steps_per_epoch):
    batch = batches.batch(step)
    width = batch["student_ids"].shape[1]
    longest_text = max(batch["student_mask"].sum(1).max(), batch["teacher_mask"].sum(1).max())
    smaller = [b for b in buckets if b < width]
    assert longest_text <= width and (not smaller or longest_text > smaller[-1])


@pytest.mark.parametrize("buckets", [(32, 16), (), (0, 16), (16.5, 32)])
def test_bad_length_buckets_are_refused(buckets):
  with pytest.raises(ValueError, match="length_buckets must be ascending positive integers"):
    make_batches(length_buckets=buckets)


@pytest.mark.parametrize("num_shards", [2, 8])
def test_each_shard_fills_its_rows_of_every_batch_from_its_own_rows(num_shards):
  batches = make_batches(num_shards=num_shards, shards=range(num_shards))
  for epoch in (0, 1):
    seen = []
    for step in range(epoch * batches.steps_per_epoch, (epoch + 1) * batches.steps_per_epoch):
      index = batches.indices(step)
      assert index.shape == (num_shards, 8 // num_shards)
      assert (index % num_shards == np.arange(num_shards)[:, None]).all()
      assert batches.buckets[index].max() <= batches.width(step) <= 48
      seen += index.ravel().tolist()
    assert len(seen) == len(set(seen)), "a row twice in one epoch"
    # Rows that fill no batch wait for the next epoch: at most a batch per bucket, plus the
    # shards' one-row difference in size.
    assert len(seen) >= 100 - 8 * len(batches.shapes) - num_shards
  later = epoch_schedule(batches.buckets, num_shards=num_shards,
                         rows_per_shard=8 // num_shards, seed=0, epoch=3)
  assert len(later[0]) == batches.steps_per_epoch  # every epoch alike


@pytest.mark.parametrize("split", [[[0, 1, 2, 3]], [[0, 1], [2, 3]], [[0], [1], [2], [3]]])
def test_processes_holding_some_shards_feed_the_one_process_batches(split):
  columns = random_columns()
  whole = process_batches(columns, [0, 1, 2, 3], 4)
  parts = [process_batches(columns, shards, 4) for shards in split]
  assert {p.steps_per_epoch for p in parts} == {whole.steps_per_epoch}
  for step in (0, 3, whole.steps_per_epoch + 2):
    expected = whole.batch(step)
    local = [p.batch(step) for p in parts]
    for key, value in expected.items():
      np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), value)
    for p in parts:  # what a process holds is only its shards' rows
      assert len(p.columns["student"]) == sum(len(shard_rows(100, s, 4)) for s in p.shards)
      np.testing.assert_array_equal(p.indices(step), whole.indices(step))


def test_a_shards_rows_beyond_the_thinnest_shards_wait_for_a_wider_bucket():
  # Shard 0 (even rows): two rows of bucket 16 and one of 32; shard 1: one of 16, two of 32.
  buckets = np.array([16, 16, 16, 32, 32, 32])
  rows, widths = epoch_schedule(buckets, num_shards=2, rows_per_shard=1, seed=0, epoch=0)
  assert sorted(rows.ravel().tolist()) == list(range(6)), "every row used"
  assert (rows % 2 == np.array([[0], [1]])).all()
  assert sorted(widths.tolist()) == [16, 32, 32]
  moved = [r for batch, w in zip(rows, widths) for r in batch.ravel() if buckets[r] < w]
  assert len(moved) == 1 and moved[0] % 2 == 0


def test_one_shard_makes_the_plain_bucketed_schedule():
  batches = make_batches()
  buckets = batches.buckets
  for epoch in (0, 2):
    rng = np.random.default_rng([0, epoch])
    order = rng.permutation(100)
    plain = []
    for width in batches.shapes:
      members = order[buckets[order] == width]
      plain += list(members[:len(members) - len(members) % 8].reshape(-1, 8))
    plain = [plain[i] for i in rng.permutation(len(plain))]
    for i, index in enumerate(plain):
      np.testing.assert_array_equal(batches.indices(epoch * len(plain) + i), index[None])


def test_sharded_batches_refuse_what_cannot_split():
  with pytest.raises(ValueError, match="batch size 8 does not split into 3 shards"):
    make_batches(num_shards=3, shards=range(3))
  columns = random_columns()
  with pytest.raises(ValueError, match="lengths disagree"):
    BucketedBatches({k: v[::2] for k, v in columns.items()}, {"student": 0, "teacher": 0},
                    batch_size=8, max_length=48, seed=0, lengths=longest(columns)[::-1],
                    num_shards=2, shards=[0])
  with pytest.raises(ValueError, match="pass every row's lengths"):
    BucketedBatches(columns, {"student": 0, "teacher": 0}, batch_size=8, max_length=48, seed=0,
                    num_shards=2, shards=[0])
  short = {"student": [np.arange(5)] * 4 + [np.arange(40)] * 4, "teacher": [np.arange(5)] * 8}
  with pytest.raises(ValueError, match="not one full batch of 8"):
    BucketedBatches(short, {"student": 0, "teacher": 0}, batch_size=8, max_length=48, seed=0)
