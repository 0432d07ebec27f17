"""New pieces: learned pieces shorten the student language's tokenisation, the extended
tokenizer round-trips."""

import pytest
from transformers import AutoTokenizer

from optical_jax.adaptation import pieces as pieces_lib
from tests.adaptation.bitext import PAIRS

CHICHEWA = [s for s, _ in PAIRS]


def _token_count(tokenizer, texts):
  return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def test_new_pieces_tokenise_chichewa_into_fewer_tokens(minilm_dir, tmp_path):
  old = AutoTokenizer.from_pretrained(str(minilm_dir))
  pieces = pieces_lib.learn_pieces(CHICHEWA, old, count=40)
  assert 0 < len(pieces) <= 40 and len(set(pieces)) == len(pieces)
  assert not set(pieces) & set(old.get_vocab())
  assert "mulungu" in pieces  # the most frequent word MiniLM splits (mu ##lun ##gu)
  new = pieces_lib.extend_tokenizer(old, pieces, tmp_path)
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
  assert (pieces_lib.learn_pieces(CHICHEWA, old, count=25)
          == pieces_lib.learn_pieces(list(reversed(CHICHEWA)), old, count=25))


def test_extending_refuses_pieces_already_there(minilm_dir, tmp_path):
  old = AutoTokenizer.from_pretrained(str(minilm_dir))
  with pytest.raises(ValueError, match="already there"):
    pieces_lib.extend_tokenizer(old, ["the"], tmp_path)


def test_extension_needs_a_wordpiece_tokenizer():
  from tokenizers import Tokenizer, models
  from transformers import PreTrainedTokenizerFast
  unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("a", 0.0)])))
  with pytest.raises(ValueError, match="WordPiece"):
    pieces_lib.learn_pieces(CHICHEWA, unigram, count=5)
