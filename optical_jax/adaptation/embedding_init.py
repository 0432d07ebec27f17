"""The word-embedding rows of new vocabulary pieces, two ways:

* `mean_of_pieces_rows` (the FOCUS/WECHSEL-style baseline): the mean of the old embeddings
  of the pieces the new piece used to be split into;
* `ot_plan_rows` ("ot_plan"): the OT plan between the initial student's contextual token
  embeddings of a student-language sentence (old tokenizer) and the teacher's of its English
  translation says where each occurrence of the new piece (its old pieces' rows of the plan)
  sends its mass; the new row is the plan-weighted mean of the *input* embeddings of those
  English tokens (`plan_weighted_rows`). The plans have idf marginals (`alignment`): with
  uniform ones a student that does not know the language yet sends most mass to "the", "and"
  and commas, and every new row became nearly their mean. The plan lives in the teacher's
  output space (contextual token embeddings), but a word-embedding row must live in the
  student's input space: the English tokens are therefore mapped through the student's own
  input embedding matrix (`teacher_token_targets`): the row of the same token when student
  and teacher share a vocabulary (the demo, where the student starts as the teacher, so these
  are exactly the teacher's input embeddings), else the mean of the student's embeddings of
  the pieces the student's tokenizer splits the English token into. Pieces no sampled
  occurrence covers keep the mean-of-pieces row. With `old_pieces` the same plans give rows
  for the old pieces the student texts use outside any new piece ("ot_plan_all").

`grow_embeddings` appends the rows to an encoder's parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_EMBEDDINGS = ("embeddings", "word_embeddings", "embedding")


def mean_of_pieces_rows(embeddings: jax.Array, splits: Sequence[Sequence[int]]) -> jax.Array:
  """The mean of the old embedding rows each new piece used to be split into.

  Args:
    embeddings: `[V, d]` the old word-embedding matrix.
    splits: for each of `N` new pieces, the old ids it split into (at least one).

  Returns:
    `[N, d]` float32.

  >>> mean_of_pieces_rows(jnp.array([[0., 2.], [2., 0.], [4., 4.]]), [[0, 1], [2]])
  Array([[1., 1.],
         [4., 4.]], dtype=float32)
  """
  width = max(len(s) for s in splits)
  index = np.zeros((len(splits), width), np.int32)
  weight = np.zeros((len(splits), width), np.float32)
  for row, ids in enumerate(splits):
    index[row, :len(ids)] = ids
    weight[row, :len(ids)] = 1.0 / len(ids)
  return jnp.einsum("nk,nkd->nd", weight, jnp.asarray(embeddings, jnp.float32)[index])


def plan_weighted_rows(plans: jax.Array, piece_of_token: jax.Array, teacher_ids: jax.Array,
                       target_embeddings: jax.Array, *, num_rows: int,
                       chunk_size: int = 256) -> tuple[jax.Array, jax.Array]:
  """The "ot_plan" rows: for each row `k` (a new piece; with `ot_plan_all` also an old one),
  the plan-weighted mean of the target embeddings of the teacher tokens its occurrences are
  transported to.

  row[k] = sum_{b,i: piece(b,i)=k} sum_j P[b,i,j] T[teacher_ids[b,j]] / mass[k],
  mass[k] = sum_{b,i: piece(b,i)=k} sum_j P[b,i,j].

  Args:
    plans: `[B, Ls, Lt]` OT plans (rows: the student's old tokens).
    piece_of_token: `[B, Ls]` int: the row (0..num_rows-1) each old student token feeds, -1
      for none.
    teacher_ids: `[B, Lt]` int teacher token ids.
    target_embeddings: `[Vt, d]` each teacher token's embedding in the student's input space
      (`teacher_token_targets`).
    num_rows: `N`, the number of rows.
    chunk_size: pairs per step (bounds memory at `chunk_size * Lt * d` floats).

  Returns:
    `(rows [N, d], mass [N])` float32; rows with no mass are zeros.

  >>> plans = jnp.array([[[0.5, 0.0], [0.0, 0.5]]])  # token 0 -> teacher 0, token 1 -> 1
  >>> targets = jnp.array([[1., 0.], [0., 1.], [9., 9.]])
  >>> rows, mass = plan_weighted_rows(plans, jnp.array([[0, -1]]), jnp.array([[1, 2]]),
  ...                                 targets, num_rows=1)
  >>> rows, mass
  (Array([[0., 1.]], dtype=float32), Array([0.5], dtype=float32))
  """
  plans = np.asarray(plans, np.float32)
  segments = np.where(np.asarray(piece_of_token) >= 0, piece_of_token, num_rows)  # num_rows: none
  teacher_ids = np.asarray(teacher_ids)
  targets = jnp.asarray(target_embeddings, jnp.float32)
  sums = jnp.zeros((num_rows + 1, targets.shape[1]), jnp.float32)
  mass = jnp.zeros((num_rows + 1,), jnp.float32)
  for start in range(0, plans.shape[0], chunk_size):
    part = slice(start, start + chunk_size)
    chunk_sums, chunk_mass = _segment_sums(plans[part], segments[part], teacher_ids[part],
                                           targets, num_rows + 1)
    sums, mass = sums + chunk_sums, mass + chunk_mass
  sums, mass = sums[:num_rows], mass[:num_rows]
  return jnp.where(mass[:, None] > 0, sums / jnp.where(mass > 0, mass, 1.0)[:, None], 0.0), mass


@functools.partial(jax.jit, static_argnums=4)
def _segment_sums(plans, segments, teacher_ids, targets, num_segments):
  moved = jnp.einsum("bij,bjd->bid", plans, targets[teacher_ids])  # [b, Ls, d]
  seg = segments.reshape(-1)
  return (jax.ops.segment_sum(moved.reshape(-1, targets.shape[1]), seg, num_segments),
          jax.ops.segment_sum(plans.sum(-1).reshape(-1), seg, num_segments))


def occurrences(new_ids: np.ndarray, new_offsets: np.ndarray, old_offsets: np.ndarray,
                old_mask: np.ndarray, *, first_new_id: int) -> np.ndarray:
  """Which new piece each old token is part of, by character overlap.

  Args:
    new_ids: `[B, Ln]` ids under the extended tokenizer (new pieces: `>= first_new_id`).
    new_offsets: `[B, Ln, 2]` their character spans.
    old_offsets: `[B, Ls, 2]` spans of the tokens under the old tokenizer.
    old_mask: `[B, Ls]` true on real, non-special old tokens.
    first_new_id: the id of new piece 0.

  Returns:
    `[B, Ls]` int32: new piece index of each old token (the one it overlaps most), -1 none.

  >>> occurrences(np.array([[5, 10]]), np.array([[[0, 1], [1, 5]]]),
  ...             np.array([[[0, 1], [1, 3], [3, 5]]]), np.ones((1, 3), bool), first_new_id=10)
  array([[-1,  0,  0]], dtype=int32)
  """
  out = np.full(old_mask.shape, -1, np.int32)
  for b in range(new_ids.shape[0]):
    spans = [(new_offsets[b, j], new_ids[b, j] - first_new_id)
             for j in range(new_ids.shape[1]) if new_ids[b, j] >= first_new_id]
    if not spans:
      continue
    for i in np.flatnonzero(old_mask[b]):
      a, e = old_offsets[b, i]
      best, best_overlap = -1, 0
      for (s, t), piece in spans:
        overlap = min(e, t) - max(a, s)
        if overlap > best_overlap:
          best, best_overlap = piece, overlap
      out[b, i] = best
  return out


def teacher_token_targets(student: Any, teacher: Any, embeddings: np.ndarray,
                          teacher_ids: np.ndarray | None = None) -> np.ndarray:
  """Each teacher token's embedding in the student's input space, `[Vt, d]`.

  Shared vocabulary (the student starts as the teacher): the student's row of the same token.
  Otherwise: the mean of the student's rows of the pieces its tokenizer splits the teacher
  token's text into (only for `teacher_ids` when given; other rows are zeros).
  """
  s_vocab, t_vocab = student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
  if s_vocab == t_vocab:
    return np.asarray(embeddings[:len(t_vocab)], np.float32)
  wanted = sorted(set(np.asarray(teacher_ids).ravel().tolist()) if teacher_ids is not None
                  else set(t_vocab.values()))
  texts = [teacher.tokenizer.convert_tokens_to_string(
      [teacher.tokenizer.convert_ids_to_tokens(int(i))]).strip() for i in wanted]
  ids = student.tokenizer(texts, add_special_tokens=False)["input_ids"]
  out = np.zeros((max(len(t_vocab), max(wanted) + 1), embeddings.shape[1]), np.float32)
  for t, pieces in zip(wanted, ids):
    if pieces:
      out[t] = np.asarray(embeddings)[pieces].mean(0)
  return out


def ot_plan_rows(student: Any, teacher: Any, alignment: Any, tokenizer: Any,
                 embeddings: jax.Array, *, first_new_id: int, num_new: int,
                 old_pieces: bool = False) -> tuple[jax.Array, jax.Array]:
  """The "ot_plan" rows of the `num_new` pieces to which `tokenizer` (the student's, extended)
  gives ids `first_new_id, ...`, from `alignment` (an `alignment.Alignment` of student texts
  under the old tokenizer and their translations).

  Args:
    student, teacher: the `LoadedEncoder`s the alignment was computed with.
    alignment: its plans, tokens and character offsets.
    tokenizer: the extended tokenizer.
    embeddings: `[V, d]` the student's old word-embedding matrix.
    first_new_id, num_new: the new pieces' ids.
    old_pieces: also the rows of the old pieces the student texts still use where no new
      piece covers them (id `t` at index `num_new + t`; special tokens excluded).

  Returns:
    `(rows [num_new, d], mass [num_new])` as `plan_weighted_rows`: zeros where no occurrence
    of the piece was aligned; `[num_new + first_new_id, ...]` with `old_pieces`.
  """
  new = tokenizer(alignment.student_texts, truncation=True,
                  max_length=alignment.student_ids.shape[1], padding="max_length",
                  return_offsets_mapping=True)
  piece_of_token = occurrences(np.asarray(new["input_ids"]), np.asarray(new["offset_mapping"]),
                               alignment.student_offsets, alignment.student_mask,
                               first_new_id=first_new_id)
  num_rows = num_new
  if old_pieces:  # old id t feeds row num_new + t
    alone = (piece_of_token < 0) & alignment.student_mask
    piece_of_token = np.where(alone, num_new + alignment.student_ids, piece_of_token)
    num_rows = num_new + first_new_id
  targets = teacher_token_targets(student, teacher, np.asarray(embeddings),
                                  alignment.teacher_ids)
  return plan_weighted_rows(alignment.plans, piece_of_token, alignment.teacher_ids, targets,
                            num_rows=num_rows)


def grow_embeddings(params: Mapping, rows: jax.Array) -> dict:
  """`params` (an encoder tree) with `rows` `[N, d]` appended to its word embeddings.

  >>> p = {"embeddings": {"word_embeddings": {"embedding": jnp.zeros((3, 2))}}}
  >>> grow_embeddings(p, jnp.ones((1, 2)))["embeddings"]["word_embeddings"]["embedding"].shape
  (4, 2)
  """
  node = params
  for key in _EMBEDDINGS:
    node = node[key]
  return with_word_embeddings(params, jnp.concatenate(
      [jnp.asarray(node, jnp.float32), jnp.asarray(rows, jnp.float32)]))


def with_word_embeddings(params: Mapping, matrix: jax.Array) -> dict:
  """`params` (an encoder tree) with its word-embedding matrix replaced by `matrix` `[V, d]`."""
  new = jax.tree_util.tree_map(lambda x: x, dict(params))
  node = new
  for key in _EMBEDDINGS[:-1]:
    node[key] = dict(node[key])
    node = node[key]
  node[_EMBEDDINGS[-1]] = jnp.asarray(matrix, jnp.float32)
  return new
