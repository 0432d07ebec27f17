"""optical_jax.scoring against numpy, and its place in the package."""


import numpy as np
import pytest

import optical_jax.losses
import optical_jax.scoring
from optical_jax.scoring import dense_scores, maxsim_scores


@pytest.mark.slow
def test_dense_and_maxsim_scores_match_numpy():
  rng = np.random.default_rng(1)
  q, d = rng.normal(size=(3, 4, 5)), rng.normal(size=(7, 6, 5))
  qm = np.arange(4)[None] < np.array([4, 2, 1])[:, None]
  dm = np.arange(6)[None] < np.array([6, 1, 3, 5, 2, 6, 4])[:, None]
  qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
  dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
  expected = np.zeros((3, 7))
  for i in range(3):
    for j in range(7):
      expected[i, j] = (qn[i][qm[i]] @ dn[j][dm[j]].T).max(axis=1).sum()
  np.testing.assert_allclose(maxsim_scores(q, qm, d, dm), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maxsim_scores(q, qm, d, dm, doc_chunk_size=3), expected,
                             rtol=1e-5, atol=1e-6)
  pooled_q, pooled_d = q[:, 0], d[:, 0]
  np.testing.assert_allclose(dense_scores(pooled_q, pooled_d), pooled_q @ pooled_d.T,
                             rtol=1e-5)
  np.testing.assert_allclose(dense_scores(pooled_q, pooled_d, similarity="cosine"),
                             qn[:, 0] @ dn[:, 0].T, rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument():
  rng = np.random.default_rng(0)
  q, d = rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 6, 4))
  with pytest.raises(ValueError, match="doc_mask must have shape"):
    maxsim_scores(q, np.ones((2, 3)), d, np.ones((5, 2)))
  with pytest.raises(ValueError, match="queries dim 3 != documents dim 4"):
    dense_scores(q[:, 0, :3], d[:, 0])
  with pytest.raises(ValueError, match="similarity must be"):
    dense_scores(q[:, 0], d[:, 0], similarity="l2")


def test_losses_still_exports_the_scores():
  assert optical_jax.losses.dense_scores is optical_jax.scoring.dense_scores
  assert optical_jax.losses.maxsim_scores is optical_jax.scoring.maxsim_scores
  assert {"dense_scores", "maxsim_scores"} <= set(optical_jax.losses.__all__)
