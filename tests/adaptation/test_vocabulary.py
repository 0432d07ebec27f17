"""Vocabulary adaptation end to end: the adapted student, both initialisations of its new
rows."""

import numpy as np
import pytest

from optical_jax.adaptation import vocabulary
from optical_jax.adaptation.embedding_init import mean_of_pieces_rows
from optical_jax.adaptation.pieces import piece_ids
from optical_jax.models.hf_checkpoint import load_encoder
from tests.adaptation.bitext import PAIRS

pytestmark = pytest.mark.slow  # every test here runs over ~5 s


def test_adapt_student_writes_a_loadable_student(tiny_bert_dir, tmp_path):
  student = load_encoder(tiny_bert_dir)
  results = {}
  for init in ("mean_of_pieces", "ot_plan"):
    results[init] = vocabulary.adapt_student(student, student, PAIRS, count=20, init=init,
                                             directory=tmp_path / init, alignment_pairs=16,
                                             max_length=32)
  mean, ot = results["mean_of_pieces"], results["ot_plan"]
  assert mean.pieces == ot.pieces and len(ot.pieces) == 20
  assert mean.ot_initialised == 0 and 0 < ot.ot_initialised <= 20
  old = student.params["embeddings"]["word_embeddings"]["embedding"]
  grown = {init: np.asarray(load_encoder(tmp_path / init).params["embeddings"][
      "word_embeddings"]["embedding"]) for init in results}
  for init, table in grown.items():
    assert table.shape == (old.shape[0] + 20, old.shape[1])
    np.testing.assert_array_equal(table[:old.shape[0]], old)  # old rows untouched
    assert np.isfinite(table).all()
  split = piece_ids(mean.pieces, student.tokenizer.get_vocab())
  np.testing.assert_allclose(grown["mean_of_pieces"][old.shape[0]:],
                             mean_of_pieces_rows(old, split), atol=1e-6)
  differs = ~np.isclose(grown["ot_plan"][old.shape[0]:],
                        grown["mean_of_pieces"][old.shape[0]:]).all(axis=1)
  assert differs.sum() == ot.ot_initialised
  adapted = load_encoder(tmp_path / "ot_plan")
  assert adapted.config.vocab_size == old.shape[0] + 20
  assert len(adapted.tokenizer) == old.shape[0] + 20


def test_ot_plan_all_also_translates_the_old_pieces_the_student_texts_use(tiny_bert_dir,
                                                                          tmp_path):
  """"ot_plan_all": the new rows as "ot_plan" makes them; besides, each old piece the sampled
  student texts still use (outside any new piece) gets its plan-weighted row; every other old
  row, special tokens included, stays."""
  from optical_jax.adaptation.alignment import align_sample
  student = load_encoder(tiny_bert_dir)
  results = {init: vocabulary.adapt_student(student, student, PAIRS, count=20, init=init,
                                            directory=tmp_path / init, alignment_pairs=16,
                                            max_length=32)
             for init in ("ot_plan", "ot_plan_all")}
  old = np.asarray(student.params["embeddings"]["word_embeddings"]["embedding"])
  grown = {init: np.asarray(load_encoder(tmp_path / init).params["embeddings"][
      "word_embeddings"]["embedding"]) for init in results}
  n_old = old.shape[0]
  np.testing.assert_allclose(grown["ot_plan_all"][n_old:], grown["ot_plan"][n_old:], atol=1e-6)
  changed = set(np.flatnonzero(~np.isclose(grown["ot_plan_all"][:n_old], old).all(axis=1)))
  # The old pieces of the same sample the adaptation aligned (same size, seed and length).
  alignment = align_sample(student, student, PAIRS, size=16, seed=0, max_length=32,
                           epsilon=0.05, center=True)
  used = set(alignment.student_ids[alignment.student_mask].tolist())
  assert changed and changed <= used
  special = set(student.tokenizer.all_special_ids)
  assert not changed & special
  assert results["ot_plan_all"].ot_initialised == results["ot_plan"].ot_initialised
  assert results["ot_plan_all"].old_initialised == len(changed)
  assert results["ot_plan"].old_initialised == 0
