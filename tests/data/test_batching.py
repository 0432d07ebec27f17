import numpy as np
import pytest

from optical_jax.data.batching import BucketedBatches


def make_batches(seed=0, n=100, batch_size=8, **options):
  rng = np.random.default_rng(1)
  columns = {"student": [np.arange(rng.integers(1, 60)) for _ in range(n)],
             "teacher": [np.arange(rng.integers(1, 20)) for _ in range(n)]}
  return BucketedBatches(columns, {"student": 0, "teacher": 0}, batch_size=batch_size,
                         max_length=48, seed=seed, **options)


def test_batches_are_a_pure_function_of_seed_and_step():
  a, b = make_batches(), make_batches()
  for step in (0, 5, 11, 40):  # 40 is past the first epoch
    for key, value in a.batch(step).items():
      np.testing.assert_array_equal(value, b.batch(step)[key])
  assert not np.array_equal(make_batches(seed=1).indices(0), a.indices(0))


def test_batches_use_a_bounded_set_of_shapes_and_cover_an_epoch_once():
  batches = make_batches()
  assert batches.shapes == [16, 32, 48]
  seen = np.concatenate([batches.indices(s) for s in range(batches.steps_per_epoch)])
  assert len(seen) == len(set(seen.tolist()))
  for step in range(batches.steps_per_epoch):
    batch = batches.batch(step)
    assert batch["student_ids"].shape[1] in batches.shapes
    assert batch["student_ids"].shape == batch["teacher_mask"].shape
    longest = max(batch["student_mask"].sum(1).max(), batch["teacher_mask"].sum(1).max())
    assert longest <= batch["student_ids"].shape[1]


def test_batches_pad_to_the_smallest_given_bucket_capped_at_max_length():
  buckets = (8, 24, 40, 56)
  batches = make_batches(length_buckets=buckets)  # max_length 48
  assert batches.shapes == [8, 24, 40, 48]
  for step in range(batches.steps_per_epoch):
    batch = batches.batch(step)
    width = batch["student_ids"].shape[1]
    longest = max(batch["student_mask"].sum(1).max(), batch["teacher_mask"].sum(1).max())
    smaller = [b for b in buckets if b < width]
    assert longest <= width and (not smaller or longest > smaller[-1])


@pytest.mark.parametrize("buckets", [(32, 16), (), (0, 16), (16.5, 32)])
def test_bad_length_buckets_are_refused(buckets):
  with pytest.raises(ValueError, match="length_buckets must be ascending positive integers"):
    make_batches(length_buckets=buckets)
