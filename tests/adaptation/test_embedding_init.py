"""The new rows: "ot_plan" against the mean of the old pieces, by hand."""

import jax.numpy as jnp
import numpy as np

from optical_jax.adaptation import embedding_init


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
  rows, mass = embedding_init.plan_weighted_rows(np.stack(plans), np.array(piece_of_token),
                                                 np.array(teacher_ids), embeddings,
                                                 num_rows=1)
  mean_rows = embedding_init.mean_of_pieces_rows(embeddings, [[ma, dz, i]])
  assert np.isclose(float(mass[0]), 3 * 0.75)
  expected = (0.8 * embeddings[water] + 0.1 * embeddings[the] + 0.1 * embeddings[of])
  np.testing.assert_allclose(rows[0], expected, atol=1e-5)  # 0.8 = mean share of "water"

  def distance(row):
    return float(jnp.linalg.norm(row - embeddings[water]))

  assert distance(rows[0]) < 0.5 * distance(mean_rows[0])
  cos = lambda a, b: float(jnp.dot(a, b) / jnp.linalg.norm(a) / jnp.linalg.norm(b))
  assert cos(rows[0], embeddings[water]) > 0.9 > cos(mean_rows[0], embeddings[water])
