"""Entropic OT plans between a student's and the teacher's token embeddings of bitext pairs:
the alignments that the vocabulary's "ot_plan" initialisation and the lexicon read.

The plans are the training loss's own (`optical_jax.losses.ot_distillation_loss` with
`return_diagnostics=True`): cost 1 - cos between the contextual token embeddings (the
encoders' last hidden states), special tokens ([CLS], [SEP], padding) left out of both
marginals, so that their mass goes to words. By default the marginals are idf weights
(`idf_weights`, per side, over the sample): a student that does not know the language yet
spreads each token's mass nearly uniformly, and with uniform marginals most of it lands on
"the", "and", "of" and commas, which every verse has; idf takes those out of the plans.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.data.idf import document_frequencies, idf_table
from optical_jax.losses import ot_distillation_loss


@dataclasses.dataclass
class Alignment:
  """OT plans of `n` sentence pairs and the tokenisation they were computed on.

  Student arrays are `[n, Ls]`, teacher arrays `[n, Lt]` (padded to the lengths asked for):
  `*_ids` token ids, `*_mask` true on real, non-special tokens (the OT marginals),
  `*_word_ids` the index of the pre-tokenised word each token belongs to (-1: none),
  `student_offsets` `[n, Ls, 2]` character spans in the student text. `plans` `[n, Ls, Lt]`
  float32: row i of pair k is where student token i's mass (1 / real tokens) goes.
  """

  student_texts: list[str]
  teacher_texts: list[str]
  student_ids: np.ndarray
  student_mask: np.ndarray
  student_word_ids: np.ndarray
  student_offsets: np.ndarray
  teacher_ids: np.ndarray
  teacher_mask: np.ndarray
  teacher_word_ids: np.ndarray
  plans: np.ndarray


def tokenize_words(tokenizer: Any, texts: Sequence[str], *, length: int) -> dict[str, np.ndarray]:
  """Token ids, real-token masks (special tokens excluded), word ids and character offsets.

  Args:
    tokenizer: a transformers fast tokenizer.
    texts: `n` strings.
    length: the padded (and truncated) length `L`.

  Returns:
    `{"ids": [n, L] int32, "mask": [n, L] bool, "word_ids": [n, L] int32 (-1: special or
    padding), "offsets": [n, L, 2] int32}`.

  Example (MiniLM's tokenizer: [CLS] n ##di ##po ana ##ti [SEP] [PAD])::

    tokenize_words(tokenizer, ["Ndipo anati"], length=8)["word_ids"]
    # array([[-1,  0,  0,  0,  1,  1, -1, -1]], dtype=int32)
  """
  batch = tokenizer(list(texts), truncation=True, max_length=length, padding="max_length",
                    return_offsets_mapping=True, return_special_tokens_mask=True)
  ids = np.asarray(batch["input_ids"], np.int32)
  attention = np.asarray(batch["attention_mask"], bool)
  special = np.asarray(batch["special_tokens_mask"], bool)
  word_ids = np.full(ids.shape, -1, np.int32)
  for row in range(len(texts)):
    for col, word in enumerate(batch.word_ids(row)):
      if word is not None:
        word_ids[row, col] = word
  mask = attention & ~special
  return {"ids": ids, "mask": mask, "word_ids": np.where(mask, word_ids, -1),
          "offsets": np.asarray(batch["offset_mapping"], np.int32)}


def idf_weights(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per-token idf over the rows, `log((n + 1) / (df + 1))` (0 for a token every row has),
  where `df` counts the rows holding the token id; 0 on masked tokens.

  Args:
    ids: `[n, L]` token ids.
    mask: `[n, L]` true on the tokens that count.

  Returns:
    `[n, L]` float32.

  >>> idf_weights(np.array([[5, 7], [5, 8]]), np.ones((2, 2), bool)).round(3)
  array([[0.   , 0.405],
         [0.   , 0.405]], dtype=float32)
  """
  mask = np.asarray(mask, bool)
  df = document_frequencies((row[real] for row, real in zip(ids, mask)), int(ids.max()) + 1)
  return np.where(mask, idf_table(df, ids.shape[0])[ids], 0.0).astype(np.float32)


def compute_alignment(student: Any, teacher: Any, student_texts: Sequence[str],
                      teacher_texts: Sequence[str], *, student_params: Any = None,
                      max_length: int = 64, epsilon: float = 0.05, center: bool = True,
                      max_iterations: int = 100, batch_size: int = 64,
                      weighting: str = "idf") -> Alignment:
  """OT plans between the student's token embeddings of `student_texts` and the teacher's of
  their translations `teacher_texts`, in batches of `batch_size` (one compiled shape).

  Args:
    student, teacher: `LoadedEncoder`s of the same hidden width (the student as it starts,
      before any projection is learned).
    student_texts, teacher_texts: `n` aligned sentences.
    student_params: the student's parameters (default: its checkpoint's).
    max_length: tokens per sentence, both sides.
    epsilon, center, max_iterations: as in `ot_distillation_loss` (center: subtract the
      batch's mean teacher token, as config.ot.center does).
    batch_size: pairs per encoder call.
    weighting: the marginals: "idf" (`idf_weights` of each side over these pairs) or
      "uniform" (as the training loss).

  Returns:
    An `Alignment` of the `n` pairs, plans `[n, max_length, max_length]`.

  Raises:
    ValueError: the widths differ (a projection would have to be learned first) or the
      text lists differ in length.

  Example::

    a = compute_alignment(student, teacher, ["Ndipo anati"], ["And he said"])
    a.plans.shape  # (1, 64, 64); a.plans[0].sum() == 1
  """
  if len(student_texts) != len(teacher_texts):
    raise ValueError(f"{len(student_texts)} student texts but {len(teacher_texts)} teacher texts")
  if student.config.hidden_size != teacher.config.hidden_size:
    raise ValueError(f"the student is {student.config.hidden_size} wide and the teacher "
                     f"{teacher.config.hidden_size}: OT plans between their tokens need one "
                     "width (no projection is learned before training)")
  s = tokenize_words(student.tokenizer, student_texts, length=max_length)
  t = tokenize_words(teacher.tokenizer, teacher_texts, length=max_length)
  if weighting not in ("idf", "uniform"):
    raise ValueError(f"weighting must be 'idf' or 'uniform', got {weighting!r}")
  if weighting == "idf":
    s_weights, t_weights = idf_weights(s["ids"], s["mask"]), idf_weights(t["ids"], t["mask"])
  else:
    s_weights, t_weights = s["mask"].astype(np.float32), t["mask"].astype(np.float32)
  s_attention = s["ids"] != student.config.pad_token_id
  t_attention = t["ids"] != teacher.config.pad_token_id

  @jax.jit
  def plans_of(s_params, t_params, s_ids, s_att, s_real, s_w, t_ids, t_att, t_real, t_w):
    s_tokens = student.apply(s_params, s_ids, s_att.astype(jnp.int32))
    t_tokens = teacher.apply(t_params, t_ids, t_att.astype(jnp.int32))
    _, diagnostics = ot_distillation_loss(
        s_tokens.astype(jnp.float32), t_tokens.astype(jnp.float32), s_real, t_real,
        student_weights=s_w, teacher_weights=t_w, epsilon=epsilon, center=center,
        max_iterations=max_iterations, return_diagnostics=True)
    return diagnostics.plan

  params = student.params if student_params is None else student_params
  n = len(student_texts)
  plans = np.zeros((n, max_length, max_length), np.float32)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = batch_size - (stop - start)  # empty pairs keep one compiled shape

    def chunk(x, fill=0):
      part = x[start:stop]
      return np.concatenate([part, np.full((pad, *part.shape[1:]), fill, part.dtype)]) if pad \
          else part

    out = plans_of(params, teacher.params, chunk(s["ids"], student.config.pad_token_id),
                   chunk(s_attention), chunk(s["mask"]), chunk(s_weights),
                   chunk(t["ids"], teacher.config.pad_token_id), chunk(t_attention),
                   chunk(t["mask"]), chunk(t_weights))
    plans[start:stop] = np.asarray(out)[:stop - start]
  return Alignment(student_texts=list(student_texts), teacher_texts=list(teacher_texts),
                   student_ids=s["ids"], student_mask=s["mask"], student_word_ids=s["word_ids"],
                   student_offsets=s["offsets"], teacher_ids=t["ids"], teacher_mask=t["mask"],
                   teacher_word_ids=t["word_ids"], plans=plans)


def sample_pairs(rows: Sequence[Sequence[str]], *, size: int, seed: int) -> list[int]:
  """Indices of `min(size, len(rows))` distinct rows, in ascending order, drawn by `seed`.

  >>> sample_pairs([("a", "b")] * 5, size=3, seed=0) == sample_pairs([("a", "b")] * 5, size=3, seed=0)
  True
  """
  count = min(size, len(rows))
  return sorted(np.random.default_rng(seed).choice(len(rows), count, replace=False).tolist())


def align_sample(student: Any, teacher: Any, rows: Sequence[Sequence[str]], *, size: int,
                 seed: int, max_length: int = 64, epsilon: float = 0.05,
                 center: bool = True) -> Alignment:
  """`compute_alignment` of `size` bitext `rows` (`(student text, teacher text, ...)`) drawn
  by `seed` (`sample_pairs`): the plans that the vocabulary's "ot_plan" rows and the lexicon
  read."""
  chosen = [rows[i] for i in sample_pairs(rows, size=size, seed=seed)]
  return compute_alignment(student, teacher, [r[0] for r in chosen], [r[1] for r in chosen],
                           max_length=max_length, epsilon=epsilon, center=center)
