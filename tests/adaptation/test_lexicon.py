"""The OT lexicon: word masses from token plans, and a planted pair recovered."""

import numpy as np

from optical_jax.adaptation import lexicon


def test_word_mass_adds_pieces_up_to_words():
  # student tokens: ma ##dzi (word 0), ndi (word 1); teacher tokens: wat ##er (0), and (1)
  plans = np.array([[[0.1, 0.2, 0.0], [0.1, 0.1, 0.0], [0.0, 0.0, 0.5]]])
  mass = lexicon.word_alignment_mass(plans, np.array([[0, 0, 1]]), np.array([[0, 0, 1]]),
                                     [["madzi", "ndi"]], [["water", "and"]])
  assert dict(mass) == {("madzi", "water"): 0.5, ("ndi", "and"): 0.5}


def test_lexicon_recovers_a_planted_pair_from_synthetic_plans():
  """200 random sentence pairs; wherever "madzi" occurs with "water", its tokens' plan rows put
  extra mass on "water"'s tokens, every other mass is random."""
  rng = np.random.default_rng(0)
  ny_vocab = ["madzi", "ndi", "mulungu", "anati", "dziko", "kuti", "iye", "ndipo"]
  en_vocab = ["water", "and", "god", "said", "earth", "that", "he", "the"]
  plans, s_ids, t_ids, s_words, t_words = [], [], [], [], []
  length = 12
  for _ in range(200):
    ny = list(rng.choice(ny_vocab[1:], 5)) + ["madzi"]
    en = list(rng.choice(en_vocab[1:], 5)) + ["water"]
    rng.shuffle(ny), rng.shuffle(en)
    # two tokens per word (pieces), padded tokens get word -1
    s = np.full(length, -1); s[:12] = np.repeat(np.arange(6), 2)
    t = np.full(length, -1); t[:12] = np.repeat(np.arange(6), 2)
    p = rng.random((length, length)) * 0.2
    madzi, water = ny.index("madzi"), en.index("water")
    p[np.ix_(s == madzi, t == water)] += 1.0
    plans.append(p / p.sum())
    s_ids.append(s), t_ids.append(t), s_words.append(ny), t_words.append(en)
  mass = lexicon.word_alignment_mass(np.stack(plans), np.stack(s_ids), np.stack(t_ids),
                                     s_words, t_words)
  counts = {w: sum(ws.count(w) for ws in s_words) for w in ny_vocab}
  induced = lexicon.induce_lexicon(mass, counts, top_k=3, min_count=5)
  assert induced["madzi"][0][0] == "water"
  assert induced["madzi"][0][1] > 0.5
  assert lexicon.best_translations(induced)["madzi"] == "water"
  # Shares are of the word's mass, by decreasing mass; frequent words first.
  assert all(a[1] >= b[1] for ws in induced.values() for a, b in zip(ws, ws[1:]))
  assert list(induced) == sorted(induced, key=lambda w: (-counts[w], w))


def test_rare_words_and_punctuation_stay_out():
  plans = np.array([[[0.5, 0.0], [0.0, 0.5]]])
  mass = lexicon.word_alignment_mass(plans, np.array([[0, 1]]), np.array([[0, 1]]),
                                     [["madzi", ","]], [["water", "."]])
  assert dict(mass) == {("madzi", "water"): 0.5}
  assert lexicon.induce_lexicon(mass, {"madzi": 4}, min_count=5) == {}


def test_the_sample_table_lists_the_most_frequent_words(tmp_path):
  induced = {"ndi": [("and", 0.4), ("the", 0.2)], "madzi": [("water", 0.6)]}
  path = lexicon.write_lexicon_sample(tmp_path / "sample.md", induced, {"ndi": 50, "madzi": 7},
                                      rows=1, header="# Sample")
  text = path.read_text()
  assert text.startswith("# Sample\n\n| Chichewa | count |")
  assert "| ndi | 50 | and (0.40), the (0.20) |" in text and "madzi" not in text
