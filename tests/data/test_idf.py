"""Token idf over rows: counts rows, not occurrences; out-of-vocabulary ids are named."""

import numpy as np
import pytest

from optical_jax.data.idf import document_frequencies, idf_table


def test_document_frequency_counts_the_rows_holding_an_id_not_its_occurrences():
  rows = [np.array([1, 4, 4, 4]), np.array([1, 2]), np.array([1])]
  np.testing.assert_array_equal(document_frequencies(rows, 6), [0, 3, 1, 0, 1, 0])


def test_idf_is_zero_for_an_id_every_row_holds_and_largest_for_unseen_ids():
  idf = idf_table(np.array([3, 1, 0]), 3)
  np.testing.assert_allclose(idf, np.log([4 / 4, 4 / 2, 4 / 1]), rtol=1e-6)
  assert idf.dtype == np.float32


def test_an_id_beyond_the_vocabulary_is_named():
  with pytest.raises(ValueError, match=r"\[0, 6\); got 1\.\.9"):
    document_frequencies([np.array([1, 9])], 6)
