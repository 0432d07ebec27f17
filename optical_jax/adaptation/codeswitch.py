"""Code-switched augmentation: in a seeded share of the training sentences, student-language
words are replaced by their English translation from a lexicon (`lexicon.best_translations`),
so that the student sees English anchors in its own language's contexts."""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


def switch_words(text: str, translations: Mapping[str, str]) -> str:
  """`text` with every word found in `translations` (looked up lowercased) replaced; a
  capitalised word gets a capitalised translation.

  >>> switch_words("Madzi ndi moyo.", {"madzi": "water", "moyo": "life"})
  'Water ndi life.'
  """
  def replace(match: re.Match) -> str:
    word = match.group(0)
    english = translations.get(word.lower())
    if english is None:
      return word
    return english[:1].upper() + english[1:] if word[:1].isupper() else english
  return _WORD.sub(replace, text)


def code_switch(rows: Sequence[tuple[str, ...]], lexicon: Mapping[str, str], *, rate: float,
                seed: int, column: int = 0) -> list[tuple[str, ...]]:
  """`rows` with the words of `column` replaced by their `lexicon` translation in
  `round(rate * len(rows))` rows chosen by `seed` (deterministic); other rows and other
  columns unchanged. A chosen row with no lexicon word stays as it is.

  Args:
    rows: training rows, e.g. `(student text, teacher text)` pairs.
    lexicon: `{student word (lowercase): English word}` (`lexicon.best_translations`).
    rate: share of rows switched, in [0, 1].
    seed: chooses the rows.
    column: which field holds the student-language text.

  Returns:
    A new list of tuples.

  >>> rows = [("madzi ndi moyo", "water is life"), ("moyo", "life")]
  >>> code_switch(rows, {"moyo": "life"}, rate=0.5, seed=0)
  [('madzi ndi moyo', 'water is life'), ('life', 'life')]
  """
  if not 0 <= rate <= 1:
    raise ValueError(f"rate must be in [0, 1], got {rate}")
  count = int(math.floor(rate * len(rows) + 0.5))
  chosen = set(np.random.default_rng(seed).choice(len(rows), count, replace=False).tolist()
               ) if count else set()
  out = []
  for i, row in enumerate(rows):
    row = tuple(row)
    if i in chosen:
      row = row[:column] + (switch_words(row[column], lexicon),) + row[column + 1:]
    out.append(row)
  return out
