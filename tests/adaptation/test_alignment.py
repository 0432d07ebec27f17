"""OT plans of bitext pairs: special tokens carry no mass, the marginals are the weights."""

import numpy as np
import pytest

from optical_jax.adaptation.alignment import compute_alignment, idf_weights
from optical_jax.models.hf_checkpoint import load_encoder
from tests.adaptation.bitext import PAIRS


@pytest.mark.slow
def test_plans_leave_special_tokens_out_and_keep_the_marginals(tiny_bert_dir):
  encoder = load_encoder(tiny_bert_dir)
  pairs = PAIRS[:8]  # 8 distinct pairs
  ny, en = [p[0] for p in pairs], [p[1] for p in pairs]
  results = {w: compute_alignment(encoder, encoder, ny, en, max_length=24, batch_size=3,
                                  weighting=w) for w in ("uniform", "idf")}
  for weighting, a in results.items():
    assert a.plans.shape == (8, 24, 24)
    np.testing.assert_allclose(a.plans.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert a.plans[~a.student_mask].sum() == 0  # [CLS], [SEP], padding
    assert a.plans.transpose(0, 2, 1)[~a.teacher_mask].sum() == 0
    assert (a.student_word_ids[a.student_mask] >= 0).all()
  uniform, idf = results["uniform"], results["idf"]
  real = uniform.student_mask.sum(1, keepdims=True)
  np.testing.assert_allclose(uniform.plans.sum(2)[uniform.student_mask],
                             np.broadcast_to(1 / real, real.shape[:1] + (24,))[
                                 uniform.student_mask], atol=1e-3)
  weights = idf_weights(idf.teacher_ids, idf.teacher_mask)
  expected = weights / weights.sum(1, keepdims=True)
  np.testing.assert_allclose(idf.plans.sum(1), expected, atol=2e-3)


def test_idf_gives_tokens_of_every_row_no_weight():
  ids = np.array([[101, 5, 9, 102], [101, 5, 7, 102]])
  mask = np.array([[0, 1, 1, 0], [0, 1, 1, 0]], bool)
  weights = idf_weights(ids, mask)
  assert (weights[:, 1] == 0).all() and (weights[:, 2] > 0).all() and (weights[~mask] == 0).all()


def test_texts_must_pair_up(tiny_bert_dir):
  encoder = load_encoder(tiny_bert_dir)
  with pytest.raises(ValueError, match="2 student texts but 1"):
    compute_alignment(encoder, encoder, ["a", "b"], ["c"])
