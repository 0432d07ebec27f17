"""The teacher token cache returns what the teacher computes, encodes each pair once, and
never trusts vectors a killed run did not finish writing."""

import numpy as np
import pytest

from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.shapes import pad_sequences
from optical_jax.data.teacher_cache import TeacherTokenCache


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir):
  return load_encoder(tiny_bert_dir)


@pytest.fixture
def token_ids():
  rng = np.random.default_rng(0)
  return [rng.integers(1000, 2000, n).astype(np.int32) for n in (5, 9, 3, 12, 7, 16)]


def padded(token_ids, index, width):
  """The batch's teacher side, padded as the training batches are."""
  return pad_sequences([token_ids[i] for i in index], width, 0)


def reference(teacher, token_ids, index, width):
  """The teacher's own forward on the padded batch, as the train step would run it."""
  ids, mask = padded(token_ids, index, width)
  hidden = np.asarray(teacher.apply(teacher.params, ids, mask))
  return hidden * mask[..., None]


def lookup(cache, token_ids, index, width):
  return cache.lookup(np.asarray(index), *padded(token_ids, index, width))


@pytest.mark.slow
def test_lookup_equals_the_teacher_forward_and_is_reused(teacher, token_ids, tmp_path):
  cache = TeacherTokenCache(teacher, token_ids, tmp_path)
  index = [3, 0, 5]
  got = lookup(cache, token_ids, index, 16)
  assert got.shape == (3, 16, teacher.config.hidden_size)
  np.testing.assert_allclose(got, reference(teacher, token_ids, index, 16), atol=1e-5)
  assert cache.encoded == 3
  # Overlapping batch in a narrower shape: only the new pairs are encoded.
  got = lookup(cache, token_ids, [0, 1, 2], 12)
  np.testing.assert_allclose(got, reference(teacher, token_ids, [0, 1, 2], 12), atol=1e-5)
  assert cache.encoded == 5
  # A new instance (another run) reads everything from disk.
  again = TeacherTokenCache(teacher, token_ids, tmp_path)
  np.testing.assert_array_equal(lookup(again, token_ids, index, 16),
                                lookup(cache, token_ids, index, 16))
  assert again.encoded == 0


@pytest.mark.slow
def test_different_text_gets_its_own_cache(teacher, token_ids, tmp_path):
  first = TeacherTokenCache(teacher, token_ids, tmp_path)
  lookup(first, token_ids, [0, 1], 16)
  changed = [x.copy() for x in token_ids]
  changed[0][0] += 1
  second = TeacherTokenCache(teacher, changed, tmp_path)
  assert second.directory != first.directory
  got = lookup(second, changed, [0], 16)
  np.testing.assert_allclose(got, reference(teacher, changed, [0], 16), atol=1e-5)
  assert second.encoded == 1


def test_vectors_without_done_flags_are_recomputed(teacher, token_ids, tmp_path):
  cache = TeacherTokenCache(teacher, token_ids, tmp_path)
  lookup(cache, token_ids, [1, 4], 16)
  # A run killed after writing vectors but before its done flags: simulate garbage on disk.
  start, end = cache.offsets[2], cache.offsets[3]
  cache.tokens[start:end] = 123.0
  cache.tokens.flush()
  reopened = TeacherTokenCache(teacher, token_ids, tmp_path)
  got = lookup(reopened, token_ids, [2], 16)
  np.testing.assert_allclose(got, reference(teacher, token_ids, [2], 16), atol=1e-5)
  assert reopened.encoded == 1


def test_text_longer_than_the_width_is_an_error(teacher, token_ids, tmp_path):
  cache = TeacherTokenCache(teacher, token_ids, tmp_path)
  with pytest.raises(ValueError, match="16 tokens does not fit width 8"):
    lookup(cache, token_ids, [5], 8)


def test_another_compute_dtype_gets_its_own_cache(teacher, tiny_bert_dir, token_ids, tmp_path):
  import jax.numpy as jnp
  first = TeacherTokenCache(teacher, token_ids, tmp_path)
  bfloat16 = TeacherTokenCache(load_encoder(tiny_bert_dir, dtype=jnp.bfloat16), token_ids,
                               tmp_path)
  assert bfloat16.directory != first.directory
  assert TeacherTokenCache(load_encoder(tiny_bert_dir), token_ids, tmp_path).directory == (
      first.directory)


@pytest.mark.slow
def test_a_truncated_cache_is_rebuilt_with_a_warning(teacher, token_ids, tmp_path, caplog):
  cache = TeacherTokenCache(teacher, token_ids, tmp_path)
  lookup(cache, token_ids, [0, 1, 2, 3, 4, 5], 16)
  path = cache.directory / "tokens.npy"
  del cache
  with open(path, "r+b") as f:  # `truncate -s 3000`: done.npy still vouches for every pair
    f.truncate(3000)
  with caplog.at_level("WARNING", logger="optical_jax"):
    reopened = TeacherTokenCache(teacher, token_ids, tmp_path)
  assert "broken teacher token cache (tokens.npy: 3000 bytes where its header" in caplog.text
  assert "removed, computing it again" in caplog.text
  got = lookup(reopened, token_ids, [3, 0], 16)
  np.testing.assert_allclose(got, reference(teacher, token_ids, [3, 0], 16), atol=1e-5)
  assert reopened.encoded == 2  # recomputed, not read as zeros


def test_a_truncated_done_file_is_rebuilt_with_a_warning(teacher, token_ids, tmp_path, caplog):
  cache = TeacherTokenCache(teacher, token_ids, tmp_path)
  lookup(cache, token_ids, [0, 1], 16)
  done = cache.directory / "done.npy"
  done.write_bytes(done.read_bytes()[:20])
  with caplog.at_level("WARNING", logger="optical_jax"):
    reopened = TeacherTokenCache(teacher, token_ids, tmp_path)
  assert "broken teacher token cache (done.npy: unreadable" in caplog.text
  lookup(reopened, token_ids, [0, 1], 16)
  assert reopened.encoded == 2


def test_zero_vectors_vouched_for_are_encoded_again(teacher, token_ids, tmp_path, caplog):
  cache = TeacherTokenCache(teacher, token_ids, tmp_path)
  lookup(cache, token_ids, [1, 2], 16)
  start, end = cache.offsets[2], cache.offsets[3]
  cache.tokens[start:end] = 0  # a hole an older writer left (the file's size is right)
  cache.tokens.flush()
  reopened = TeacherTokenCache(teacher, token_ids, tmp_path)
  with caplog.at_level("WARNING", logger="optical_jax"):
    got = lookup(reopened, token_ids, [1, 2], 16)
  np.testing.assert_allclose(got, reference(teacher, token_ids, [1, 2], 16), atol=1e-5)
  assert reopened.encoded == 1 and reopened.repaired == 1
  assert "1 cached pair(s) hold zero vectors" in caplog.text


def test_other_weights_at_the_same_path_get_their_own_cache(tmp_path, token_ids):
  from tests.helpers import save_tiny_bert
  directory = save_tiny_bert(tmp_path / "teacher", seed=0)
  first = TeacherTokenCache(load_encoder(directory), token_ids, tmp_path / "cache")
  save_tiny_bert(directory, seed=1)  # re-exported in place: same path, other weights
  second = TeacherTokenCache(load_encoder(directory), token_ids, tmp_path / "cache")
  assert second.directory != first.directory
  copy = tmp_path / "copy"
  import shutil
  shutil.copytree(directory, copy)  # the same weights elsewhere: the same cache
  assert TeacherTokenCache(load_encoder(copy), token_ids, tmp_path / "cache").directory == (
      second.directory)


def test_a_second_run_never_truncates_the_file_the_first_has_mapped(teacher, token_ids,
                                                                    tmp_path):
  first = TeacherTokenCache(teacher, token_ids, tmp_path)
  lookup(first, token_ids, [0, 1, 2], 16)
  size = (first.directory / "tokens.npy").stat().st_size
  second = TeacherTokenCache(teacher, token_ids, tmp_path)  # another run, same key
  assert (first.directory / "tokens.npy").stat().st_size == size
  assert second.encoded == 0
  np.testing.assert_array_equal(lookup(second, token_ids, [0, 1, 2], 16),
                                lookup(first, token_ids, [0, 1, 2], 16))
  assert first.encoded == 3  # the first's vectors are still there for it
  assert not list(first.directory.glob(".optical-tmp-*"))


def test_the_space_is_reserved_and_a_full_disk_is_one_line_naming_the_file(
    teacher, token_ids, tmp_path, monkeypatch):
  import errno
  import os
  from optical_jax.files.cache_files import CacheWriteError
  cache = TeacherTokenCache(teacher, token_ids, tmp_path / "ok")
  path = cache.directory / "tokens.npy"
  assert os.stat(path).st_blocks * 512 >= cache.shape[0] * cache.shape[1] * 4  # not sparse

  def full(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "posix_fallocate", full)
  with pytest.raises(CacheWriteError, match=r"/tokens\.npy: cannot write the teacher token "
                     r"cache \(No space left on device\); free space there, or point "
                     r"runtime\.cache_dir elsewhere, or pass --config\.data\.teacher_cache="
                     r"False"):
    TeacherTokenCache(teacher, token_ids, tmp_path / "full")
  assert not list((tmp_path / "full").rglob("tokens*.npy"))  # the partial file removed


def test_bfloat16_vectors_are_stored_in_bfloat16(tiny_bert_dir, token_ids, tmp_path):
  import jax.numpy as jnp
  import ml_dtypes
  encoder = load_encoder(tiny_bert_dir, dtype=jnp.bfloat16)
  cache = TeacherTokenCache(encoder, token_ids, tmp_path)
  got = lookup(cache, token_ids, [0, 3], 16)
  assert got.dtype == ml_dtypes.bfloat16
  ids, mask = padded(token_ids, [0, 3], 16)
  import jax
  forward = jax.jit(encoder.apply)  # as the cache (and the train step) run it
  expected = np.asarray(forward(encoder.params, ids, mask)).astype(ml_dtypes.bfloat16)
  expected = expected * mask[..., None].astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))
  assert (cache.directory / "tokens.npy").stat().st_size <= 256 + cache.shape[0] * cache.shape[1] * 2
  again = TeacherTokenCache(encoder, token_ids, tmp_path)
  np.testing.assert_array_equal(lookup(again, token_ids, [0, 3], 16).astype(np.float32),
                                got.astype(np.float32))
  assert again.encoded == 0
