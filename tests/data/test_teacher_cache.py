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
