"""Code-switched augmentation: deterministic by seed, the asked share of sentences."""

import pytest

from optical_jax.adaptation.codeswitch import code_switch, switch_words

LEXICON = {"madzi": "water", "mulungu": "god"}


def _rows(n):
  return [(f"Mulungu anapanga madzi {i}", f"God made water {i}") for i in range(n)]


def test_code_switch_is_deterministic_and_switches_the_asked_share():
  rows = _rows(1000)
  first = code_switch(rows, LEXICON, rate=0.3, seed=7)
  assert first == code_switch(rows, LEXICON, rate=0.3, seed=7)
  changed = [i for i, (a, b) in enumerate(zip(rows, first)) if a != b]
  assert len(changed) == 300
  assert first[changed[0]][0].startswith("God anapanga water ")
  assert all(b[1] == a[1] for a, b in zip(rows, first))  # English side untouched
  other = code_switch(rows, LEXICON, rate=0.3, seed=8)
  assert {i for i, (a, b) in enumerate(zip(rows, other)) if a != b} != set(changed)
  assert rows == _rows(1000)  # the input is not modified


@pytest.mark.parametrize("rate, expected", [(0.0, 0), (1.0, 10), (0.25, 3), (0.04, 0)])
def test_shares_round_to_whole_sentences(rate, expected):
  switched = code_switch(_rows(10), LEXICON, rate=rate, seed=0)
  assert sum(a != b for a, b in zip(_rows(10), switched)) == expected


def test_only_whole_known_words_are_replaced():
  assert switch_words("Madziwo ndi madzi, MADZI.", LEXICON) == "Madziwo ndi water, Water."


def test_bad_rates_are_refused():
  with pytest.raises(ValueError, match="rate"):
    code_switch(_rows(3), LEXICON, rate=1.5, seed=0)
