"""Token ids as flat arrays: the one tokenizer call (`ids_tokenizer`) gives transformers' ids,
id for id, and flat columns hold them exactly."""

import numpy as np
import pytest

from optical_jax.files.token_arrays import flatten, ids_tokenizer, tokenize_flat

TEXTS = ["And God said, Let there be light.", "", "Ndipo Mulungu anati, Kuyere; ndipo kunayera.",
         "Café naïve – ÆØÅ 東京 🙂 [SEP] <s> [MASK]", "word " * 300,
         "  leading and trailing spaces  ", "a"]


def _transformers_ids(tokenizer, texts, max_length):
  return tokenizer(list(texts), truncation=True, max_length=max_length,
                   padding=False)["input_ids"]


def _unigram_tokenizer(side: str):
  """An XLM-R-shaped tokenizer (Unigram, Metaspace, <s> ... </s>), made here."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast
  backend = Tokenizer(models.Unigram())
  backend.pre_tokenizer = pre_tokenizers.Metaspace()
  backend.decoder = decoders.Metaspace()
  backend.train_from_iterator(TEXTS * 5, trainers.UnigramTrainer(
      vocab_size=60, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
  backend.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
  return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", unk_token="<unk>", truncation_side=side)


@pytest.mark.parametrize("max_length", [3, 16, 512])
def test_the_ids_are_transformers_ids_for_wordpiece(minilm_dir, max_length):
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
  assert ids_tokenizer(tokenizer, max_length)(TEXTS) == _transformers_ids(tokenizer, TEXTS,
                                                                         max_length)


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_ids_are_transformers_ids_for_unigram_on_either_truncation_side(side):
  tokenizer = _unigram_tokenizer(side)
  ours = ids_tokenizer(tokenizer, 8)(TEXTS)
  assert ours == _transformers_ids(tokenizer, TEXTS, 8)
  assert max(map(len, ours)) == 8 and ours[4][0 if side == "right" else -1] in (0, 2)


def test_tokens_added_later_are_seen_and_other_callers_settings_are_untouched(minilm_dir):
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
  settings = (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding)
  before = ids_tokenizer(tokenizer, 32)(["ndipo kunayera"])
  assert (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding) == settings
  tokenizer.add_tokens(["ndipo"])
  after = ids_tokenizer(tokenizer, 32)(["ndipo kunayera"])
  assert after != before and after == _transformers_ids(tokenizer, ["ndipo kunayera"], 32)


def test_a_slow_tokenizer_is_called_as_transformers_does():
  class Slow:
    is_fast = False

    def __call__(self, texts, **options):
      assert options["truncation"] and options["max_length"] == 5
      return {"input_ids": [[len(t)] for t in texts]}
  assert ids_tokenizer(Slow(), 5)(["ab", "abc"]) == [[2], [3]]


def test_flat_ids_and_offsets_hold_every_text_in_batches_or_not(minilm_dir):
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
  tokenize = ids_tokenizer(tokenizer, 16)
  ids = tokenize(TEXTS)
  whole = tokenize_flat(tokenize, TEXTS, np.uint16)
  batched = tokenize_flat(tokenize, TEXTS, np.uint16, batch=2)
  for flat, offsets in (whole, batched):
    assert flat.dtype == np.uint16
    assert [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(TEXTS))] == ids
  np.testing.assert_array_equal(flatten(ids)[1], whole[1])
