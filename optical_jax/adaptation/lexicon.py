"""A bilingual lexicon induced from OT plans: each frequent student-language word -> the
English words its tokens send the most plan mass to, summed over a sample of bitext pairs.

Word pieces are aggregated to words (the tokenizers' pre-tokenised words, so normalised:
MiniLM lowercases); words without a letter (punctuation) are left out on both sides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

Lexicon = dict[str, list[tuple[str, float]]]


def _is_word(word: str) -> bool:
  return any(ch.isalpha() for ch in word)


def pretokenized_words(tokenizer: Any, texts: Sequence[str]) -> list[list[str]]:
  """The words a fast tokenizer's `word_ids` index, per text (normalised as it normalises).

  Example::

    pretokenized_words(minilm.tokenizer, ["Ndipo anati,"])  # [['ndipo', 'anati', ',']]
  """
  backend = tokenizer.backend_tokenizer
  out = []
  for text in texts:
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    out.append([w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)])
  return out


def word_alignment_mass(plans: np.ndarray, student_word_ids: np.ndarray,
                        teacher_word_ids: np.ndarray, student_words: Sequence[Sequence[str]],
                        teacher_words: Sequence[Sequence[str]]) -> Counter:
  """Plan mass between words, summed over pairs: `{(student word, teacher word): mass}`.

  Args:
    plans: `[B, Ls, Lt]` OT plans between tokens.
    student_word_ids: `[B, Ls]` the word index of each student token (-1: none).
    teacher_word_ids: `[B, Lt]` likewise.
    student_words, teacher_words: per pair, the words those indices name.

  Returns:
    A `Counter` of float masses (words without a letter left out).

  >>> plans = np.array([[[0.25, 0.25, 0.0], [0.0, 0.0, 0.5]]])
  >>> mass = word_alignment_mass(plans, np.array([[0, 1]]), np.array([[0, 0, 1]]),
  ...                            [["madzi", "ndi"]], [["water", "and"]])
  >>> dict(mass)
  {('madzi', 'water'): 0.5, ('ndi', 'and'): 0.5}
  """
  total = Counter()
  for b in range(plans.shape[0]):
    s_ids, t_ids = student_word_ids[b], teacher_word_ids[b]
    s_real, t_real = s_ids >= 0, t_ids >= 0
    if not s_real.any() or not t_real.any():
      continue
    words = np.zeros((s_ids.max() + 1, t_ids.max() + 1), np.float64)
    rows, cols = np.nonzero(plans[b][np.ix_(s_real, t_real)] > 0)
    values = plans[b][np.ix_(s_real, t_real)][rows, cols]
    np.add.at(words, (s_ids[s_real][rows], t_ids[t_real][cols]), values)
    s_words, t_words = student_words[b], teacher_words[b]
    for i, j in zip(*np.nonzero(words)):
      if i < len(s_words) and j < len(t_words) and _is_word(s_words[i]) and _is_word(t_words[j]):
        total[(s_words[i], t_words[j])] += float(words[i, j])
  return total


def induce_lexicon(mass: Mapping[tuple[str, str], float], student_counts: Mapping[str, int], *,
                   top_k: int = 3, min_count: int = 5, max_words: int | None = None) -> Lexicon:
  """Each student word seen `min_count` times or more -> its `top_k` English words by
  accumulated plan mass, with their share of the word's mass.

  Args:
    mass: `{(student word, teacher word): mass}` (`word_alignment_mass`).
    student_counts: occurrences of each student word (where the mass was summed).
    top_k: English words kept per student word.
    min_count: rarer student words are left out.
    max_words: keep only this many student words, most frequent first.

  Returns:
    `{student word: [(English word, share), ...]}`, most frequent student word first, each
    list by decreasing mass (ties by word).

  >>> induce_lexicon({("madzi", "water"): 3.0, ("madzi", "the"): 1.0, ("ndi", "and"): 2.0},
  ...                {"madzi": 9, "ndi": 2}, top_k=1, min_count=5)
  {'madzi': [('water', 0.75)]}
  """
  by_word: dict[str, dict[str, float]] = defaultdict(dict)
  for (s, t), m in mass.items():
    if m > 0:
      by_word[s][t] = by_word[s].get(t, 0.0) + m
  frequent = sorted((w for w in by_word if student_counts.get(w, 0) >= min_count),
                    key=lambda w: (-student_counts[w], w))
  if max_words is not None:
    frequent = frequent[:max_words]
  lexicon = {}
  for word in frequent:
    targets = by_word[word]
    total = sum(targets.values())
    best = sorted(targets.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    lexicon[word] = [(t, m / total) for t, m in best]
  return lexicon


def best_translations(lexicon: Mapping[str, Sequence[tuple[str, float]]]) -> dict[str, str]:
  """`{student word: its first English word}`.

  >>> best_translations({"madzi": [("water", 0.7), ("the", 0.2)]})
  {'madzi': 'water'}
  """
  return {word: targets[0][0] for word, targets in lexicon.items() if targets}


def lexicon_table(lexicon: Mapping[str, Sequence[tuple[str, float]]],
                  student_counts: Mapping[str, int], *, rows: int = 30,
                  language: str = "student word") -> str:
  """A markdown table of the `rows` most frequent entries: word, count, English words with
  their share of its plan mass.

  >>> print(lexicon_table({"madzi": [("water", 0.75)]}, {"madzi": 9}, language="Chichewa"))
  | Chichewa | count | English (share of plan mass) |
  |---|---|---|
  | madzi | 9 | water (0.75) |
  """
  words = sorted(lexicon, key=lambda w: (-student_counts.get(w, 0), w))[:rows]
  lines = [f"| {language} | count | English (share of plan mass) |", "|---|---|---|"]
  for word in words:
    english = ", ".join(f"{t} ({share:.2f})" for t, share in lexicon[word])
    lines.append(f"| {word} | {student_counts.get(word, 0)} | {english} |")
  return "\n".join(lines)


def write_lexicon_sample(path: str | Path, lexicon: Mapping[str, Sequence[tuple[str, float]]],
                         student_counts: Mapping[str, int], *, rows: int = 30,
                         language: str = "Chichewa", header: str = "") -> Path:
  """Writes `header` and `lexicon_table` of the `rows` most frequent words to `path`."""
  path = Path(path)
  path.write_text((header.rstrip() + "\n\n" if header else "")
                  + lexicon_table(lexicon, student_counts, rows=rows, language=language) + "\n",
                  encoding="utf-8")
  return path
