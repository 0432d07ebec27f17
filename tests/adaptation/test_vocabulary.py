"""Vocabulary adaptation: learned pieces shorten the student language's tokenisation, the
extended tokenizer round-trips, and the two initialisations of the new rows."""

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from optical_jax.adaptation import vocabulary
from optical_jax.models.hf_checkpoint import load_encoder
from tests.adaptation.bitext import PAIRS

CHICHEWA = [s for s, _ in PAIRS]


def _token_count(tokenizer, texts):
  return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def test_new_pieces_tokenise_chichewa_into_fewer_tokens(minilm_dir, tmp_path):
  old = AutoTokenizer.from_pretrained(str(minilm_dir))
  pieces = vocabulary.learn_pieces(CHICHEWA, old, count=40)
  assert 0 < len(pieces) <= 40 and len(set(pieces)) == len(pieces)
  assert not set(pieces) & set(old.get_vocab())
  assert "mulungu" in pieces  # the most frequent word MiniLM splits (mu ##lun ##gu)
  new = vocabulary.extend_tokenizer(old, pieces, tmp_path)
  assert len(new) == len(old) + len(pieces)
  assert new.convert_tokens_to_ids(pieces[0]) == len(old)
  assert new.tokenize("Mulungu") == ["mulungu"]
  before, after = _token_count(old, CHICHEWA), _token_count(new, CHICHEWA)
  assert after < 0.8 * before, (before, after)
  # English is tokenised as before, and the files reload as the same tokenizer.
  english = [e for _, e in PAIRS]
  assert new(english)["input_ids"] == old(english)["input_ids"]
  reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
  assert reloaded(CHICHEWA)["input_ids"] == new(CHICHEWA)["input_ids"]
  assert (tmp_path / "vocab.txt").read_text().splitlines()[len(old):] == pieces


def test_learned_pieces_depend_on_the_texts_only(minilm_dir):
  old = AutoTokenizer.from_pretrained(str(minilm_dir))
  assert (vocabulary.learn_pieces(CHICHEWA, old, count=25)
          == vocabulary.learn_pieces(list(reversed(CHICHEWA)), old, count=25))


def test_extending_refuses_pieces_already_there(minilm_dir, tmp_path):
  old = AutoTokenizer.from_pretrained(str(minilm_dir))
  with pytest.raises(ValueError, match="already there"):
    vocabulary.extend_tokenizer(old, ["the"], tmp_path)


def test_extension_needs_a_wordpiece_tokenizer():
  from tokenizers import Tokenizer, models
  from transformers import PreTrainedTokenizerFast
  unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("a", 0.0)])))
  with pytest.raises(ValueError, match="WordPiece"):
    vocabulary.learn_pieces(CHICHEWA, unigram, count=5)


def test_ot_plan_puts_a_new_word_near_its_aligned_english_word():
  """Hand-made: "madzi" used to be ma ##dz ##i (unrelated rows); in three sentences its
  tokens send most of their plan mass to "water", the rest to "the" and "of"."""
  rng = np.random.default_rng(0)
  d = 16
  embeddings = rng.normal(size=(8, d)).astype(np.float32)  # old student = teacher inputs
  ma, dz, i, water, the, of, god = 1, 2, 3, 4, 5, 6, 7
  new_piece = 0
  plans, piece_of_token, teacher_ids = [], [], []
  for share in (0.8, 0.7, 0.9):
    # student tokens: [ma, ##dz, ##i, mulungu]; teacher tokens: [the, water, of, god]
    p = np.zeros((4, 4), np.float32)
    for token in range(3):  # the occurrence's three old tokens
      p[token] = np.array([(1 - share) / 2, share, (1 - share) / 2, 0.0]) / 4
    p[3] = np.array([0, 0, 0, 1.0]) / 4
    plans.append(p)
    piece_of_token.append([new_piece] * 3 + [-1])
    teacher_ids.append([the, water, of, god])
  rows, mass = vocabulary.plan_weighted_rows(np.stack(plans), np.array(piece_of_token),
                                             np.array(teacher_ids), embeddings, num_new=1)
  mean_rows = vocabulary.mean_of_pieces_rows(embeddings, [[ma, dz, i]])
  assert np.isclose(float(mass[0]), 3 * 0.75)
  expected = (0.8 * embeddings[water] + 0.1 * embeddings[the] + 0.1 * embeddings[of])
  np.testing.assert_allclose(rows[0], expected, atol=1e-5)  # 0.8 = mean share of "water"

  def distance(row):
    return float(jnp.linalg.norm(row - embeddings[water]))

  assert distance(rows[0]) < 0.5 * distance(mean_rows[0])
  cos = lambda a, b: float(jnp.dot(a, b) / jnp.linalg.norm(a) / jnp.linalg.norm(b))
  assert cos(rows[0], embeddings[water]) > 0.9 > cos(mean_rows[0], embeddings[water])


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
  split = vocabulary.piece_ids(mean.pieces, student.tokenizer.get_vocab())
  np.testing.assert_allclose(grown["mean_of_pieces"][old.shape[0]:],
                             vocabulary.mean_of_pieces_rows(old, split), atol=1e-6)
  differs = ~np.isclose(grown["ot_plan"][old.shape[0]:],
                        grown["mean_of_pieces"][old.shape[0]:]).all(axis=1)
  assert differs.sum() == ot.ot_initialised
  adapted = load_encoder(tmp_path / "ot_plan")
  assert adapted.config.vocab_size == old.shape[0] + 20
  assert len(adapted.tokenizer) == old.shape[0] + 20
