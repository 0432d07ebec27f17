"""Passage-length examples from sentence bitext (`data.pair_window`): windows of consecutive
pairs joined on both sides, never over max_length tokens a side, greedy, cached."""

import numpy as np
import pytest

from optical_jax.data.bitext import FileRows, ListRows
from optical_jax.data.windows import (WindowRows, find_windows, greedy_windows, window_rows,
                                      window_sizes)
from tests.training.runs import SENTENCES


def bitext_rows(n=120, seed=0):
  """`n` pairs of 1 to 12 words of the test sentences' vocabulary, and one pair of 200."""
  rng = np.random.default_rng(seed)
  student = " ".join(s for s, _ in SENTENCES).split()
  teacher = " ".join(t for _, t in SENTENCES).split()
  rows = [(" ".join(rng.choice(student, rng.integers(1, 13))),
           " ".join(rng.choice(teacher, rng.integers(1, 13)))) for _ in range(n)]
  rows.insert(n // 2, (" ".join(student * 20), " ".join(teacher * 20)))
  return rows


def unigram_tokenizer():
  """A SentencePiece-style tokenizer (unigram pieces, "▁" word marks, <s> ... </s>), as
  XLM-R's and e5's, trained on the test sentences."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
  from transformers import PreTrainedTokenizerFast
  tokenizer = Tokenizer(models.Unigram())
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
  tokenizer.decoder = decoders.Metaspace()
  trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<s>", "<pad>", "</s>",
                                                                    "<unk>"], unk_token="<unk>")
  tokenizer.train_from_iterator([t for pair in SENTENCES for t in pair] * 4, trainer)
  tokenizer.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
  return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", unk_token="<unk>")


class JoinCostingTokenizer:
  """One token a word, between [CLS] and [SEP], and one more for every capitalised word
  after the first: "A b" + "C d" joined take a token more than their parts, as subword
  tokenizers may cut a joined text differently."""
  is_fast = False

  def __call__(self, texts, *, truncation, max_length, **_):
    ids = []
    for text in texts:
      words = text.split()
      extra = sum(w[:1].isupper() for w in words[1:])
      ids.append(([101] + [5] * (len(words) + extra) + [102])[:max_length])
    return {"input_ids": ids}


def true_lengths(tokenizer, prompt, texts):
  return [len(tokenizer(prompt + t, truncation=False)["input_ids"]) for t in texts]


def check_windows(rows, starts, tokenizers, prompts, *, max_length, pair_window):
  """Windows hold 1 to N consecutive pairs, in order, all of them; a window of two or more
  fits max_length on both sides; a window of fewer than N stops because the next pair would
  not fit."""
  starts = np.asarray(starts)
  assert starts[0] == 0 and starts[-1] == len(rows)
  pairs = np.diff(starts)
  assert pairs.min() >= 1 and pairs.max() <= pair_window
  texts = [tuple(" ".join(side) for side in zip(*rows[a:b]))
           for a, b in zip(starts[:-1], starts[1:])]
  assert list(WindowRows(ListRows(rows), starts, np.zeros(len(texts))).rows()) == texts
  grown = [tuple(" ".join(side) for side in zip(*rows[a:b + 1]))
           for a, b in zip(starts[:-1], starts[1:]) if b < len(rows)]
  over = np.zeros(len(grown), bool)  # a window with the next pair is over on some side
  for side, (tokenizer, prompt) in enumerate(zip(tokenizers, prompts)):
    lengths = np.array(true_lengths(tokenizer, prompt, [t[side] for t in texts]))
    assert (lengths[pairs > 1] <= max_length).all()
    over |= np.array(true_lengths(tokenizer, prompt, [t[side] for t in grown])) > max_length
  # Greedy: a window short of N pairs could not take the next one.
  assert over[pairs[:len(grown)] < pair_window].all()
  return pairs


@pytest.mark.parametrize("kind", ["minilm", "unigram"])
@pytest.mark.parametrize("max_length, pair_window", [(32, 3), (64, 5), (128, 2)])
def test_joined_windows_fit_max_length_on_both_sides_and_are_greedy(minilm_dir, kind,
                                                                     max_length, pair_window):
  from transformers import AutoTokenizer
  tokenizer = (AutoTokenizer.from_pretrained(str(minilm_dir)) if kind == "minilm"
               else unigram_tokenizer())
  rows = bitext_rows()
  # e5-style prompts: prepended once to each joined example, and counted in its length.
  tokenizers, prompts = [tokenizer, tokenizer], ["query: ", ""]
  starts, chars = find_windows(ListRows(rows), tokenizers, prompts, max_length=max_length,
                               pair_window=pair_window)
  pairs = check_windows(rows, starts, tokenizers, prompts, max_length=max_length,
                        pair_window=pair_window)
  assert (pairs > 1).any() and (pairs == 1).any()  # windows were formed, and not everywhere
  long_row = len(rows) // 2  # over max_length alone: a window of one
  assert long_row in starts and long_row + 1 in starts
  joined = list(WindowRows(ListRows(rows), starts, chars).rows())
  np.testing.assert_array_equal(chars, [max(map(len, row)) for row in joined])


def test_windows_a_tokenizer_lengthens_when_joined_lose_pairs_until_they_fit():
  tokenizer = JoinCostingTokenizer()
  rows = [("Ab cd", "ef gh")] * 30 + [("ab cd", "Ef gh")] * 30
  # Estimated from the parts, 3 pairs fit 8 tokens (2 + 3 * 2); joined they take 10.
  lengths = np.full((60, 2), 4)
  estimated = greedy_windows(lengths, [2, 2], max_length=8, pair_window=3)
  assert set(np.diff(estimated)) == {3}
  starts, _ = find_windows(ListRows(rows), [tokenizer, tokenizer], ["", ""], max_length=8,
                           pair_window=3)
  lengths = lambda texts: [len(tokenizer([t], truncation=False, max_length=10 ** 6)
                               ["input_ids"][0]) for t in texts]
  for a, b in zip(starts[:-1], starts[1:]):
    for side in range(2):
      assert lengths([" ".join(r[side] for r in rows[a:b])])[0] <= 8
  assert set(np.diff(starts)) == {2}  # 2 pairs joined take 7 tokens: they fit


def test_greedy_windows_take_pairs_while_both_sides_fit_and_respect_caps(monkeypatch):
  import optical_jax.data.windows as windows_module
  lengths = np.array([[4, 4], [5, 3], [3, 9], [4, 4], [20, 4], [4, 4], [4, 4]])
  # Parts carry 2 tokens of overhead each; a joined window carries them once.
  starts = greedy_windows(lengths, [2, 2], max_length=10, pair_window=3)
  # [0, 1]: 4 + 3 = 7 and 4 + 1 = 5 fit, + row 2's teacher 7 = 12 does not; row 2 alone
  # (9), + row 3 = 11 no; [3]: + row 4 (20) no; 4 alone (over on its own); [5, 6].
  np.testing.assert_array_equal(starts, [0, 2, 3, 4, 5, 7])
  # Row 0 capped to one pair: row 1 starts a window, which takes row 2 (6, 10) but not row 3.
  np.testing.assert_array_equal(
      greedy_windows(lengths, [2, 2], max_length=10, pair_window=3, caps={0: 1}),
      [0, 1, 3, 4, 5, 7])
  np.testing.assert_array_equal(greedy_windows(lengths, [2, 2], max_length=100, pair_window=1),
                                np.arange(8))
  # Rows are read a block at a time: a window may span blocks.
  monkeypatch.setattr(windows_module, "_BLOCK", 3)
  np.testing.assert_array_equal(greedy_windows(lengths, [2, 2], max_length=10, pair_window=3),
                                starts)
  np.testing.assert_array_equal(greedy_windows(lengths, [2, 2], max_length=100, pair_window=4),
                                [0, 4, 7])


def test_uniform_sizes_mix_window_lengths_each_window_within_its_draw(minilm_dir):
  from transformers import AutoTokenizer
  targets = window_sizes(5000, 3, "uniform")
  assert window_sizes(5000, 3) is None  # "fixed": pair_window everywhere
  np.testing.assert_array_equal(window_sizes(5000, 3, "uniform"), targets)  # every process
  assert targets.min() == 1 and targets.max() == 3
  assert (np.abs(np.bincount(targets)[1:] / 5000 - 1 / 3) < 0.03).all()  # uniform
  # Where every window fits, each takes exactly what was drawn at its first row.
  lengths = np.full((5000, 2), 4)
  starts = greedy_windows(lengths, [2, 2], max_length=1000, pair_window=3, targets=targets)
  np.testing.assert_array_equal(np.diff(starts), targets[starts[:-1]])
  assert set(np.diff(starts)) == {1, 2, 3}  # a mixture of lengths
  # Found on real text: within the draw and max_length, and greedy up to the draw.
  tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
  rows, tokenizers, prompts = bitext_rows(), [tokenizer, tokenizer], ["", ""]
  starts, _ = find_windows(ListRows(rows), tokenizers, prompts, max_length=64, pair_window=4,
                           sizes="uniform")
  pairs = np.diff(starts)
  drawn = window_sizes(len(rows), 4, "uniform")[starts[:-1]]
  assert (pairs <= drawn).all() and (pairs > 1).any() and len(set(pairs.tolist())) > 2
  fixed, _ = find_windows(ListRows(rows), tokenizers, prompts, max_length=64, pair_window=4)
  assert len(fixed) < len(starts)  # fixed windows aim for 4 pairs each: fewer, longer ones
  for a, b, aim in zip(starts[:-1], starts[1:], drawn):
    grown = [" ".join(r[side] for r in rows[a:b + 1]) for side in range(2)]
    if b - a < aim and b < len(rows):  # stopped short of its draw: the next pair is over
      assert max(true_lengths(tokenizer, "", grown)) > 64


def test_window_rows_stream_chosen_windows_from_a_file(tmp_path):
  rows = bitext_rows(40)
  path = tmp_path / "bitext.tsv"
  path.write_text("".join(f"{s}\t{t}\n" for s, t in rows))
  base = FileRows(path, ("student", "teacher"), fingerprint="file")
  starts = np.array([0, 3, 4, 6, 9, 10, 12, 15, 18, 21, 23, 26, 29, 30, 33, 36, 39, 41])
  windows = WindowRows(base, starts, np.zeros(len(starts) - 1, np.int32))
  assert len(windows) == 17 and windows.fields == base.fields
  keep = np.array([1, 2, 7, 16])
  assert list(windows.rows(keep)) == [
      tuple(" ".join(side) for side in zip(*rows[starts[w]:starts[w + 1]])) for w in keep]
  other = WindowRows(base, np.arange(42), np.zeros(41, np.int32))
  assert other.fingerprint != windows.fingerprint  # caches of the examples tell them apart


def test_windows_are_cached_by_what_decides_them(tmp_path, minilm_dir, monkeypatch):
  from transformers import AutoTokenizer
  import optical_jax.data.windows as windows_module
  tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
  rows = ListRows(bitext_rows())
  make = lambda max_length=32, key="k": window_rows(
      rows, [tokenizer, tokenizer], ["", ""], max_length=max_length, pair_window=3,
      cache_dir=tmp_path, key=key)
  first = make()
  found = []
  original = windows_module.find_windows
  monkeypatch.setattr(windows_module, "find_windows",
                      lambda *a, **k: found.append(k["max_length"]) or original(*a, **k))
  again = make()
  np.testing.assert_array_equal(again.starts, first.starts)
  np.testing.assert_array_equal(again.longest_chars(), first.longest_chars())
  assert again.fingerprint == first.fingerprint and not found  # read, not found again
  assert len(make(max_length=64)) < len(first) and found == [64]
  make(key="another tokenizer")
  assert found == [64, 32]
  mixed = window_rows(rows, [tokenizer, tokenizer], ["", ""], max_length=32, pair_window=3,
                      sizes="uniform", cache_dir=tmp_path, key="k")
  assert found == [64, 32, 32] and mixed.fingerprint != first.fingerprint
