"""Vocabulary adaptation: WordPiece pieces learned from the student's language, added to the
student's tokenizer and grown word-embedding matrix.

`adapt_student` does all of it and writes the result as a Hugging Face checkpoint directory
(weights, config.json with the new vocab_size, the extended tokenizer) that `load_encoder`
and transformers load:

1. `pieces`: the new pieces are learned from the bitext's student side and appended to the
   student's tokenizer;
2. `embedding_init`: their embedding rows start as the mean of the old pieces each used to be
   split into ("mean_of_pieces") or, where OT plans of a sample of the bitext (`alignment`)
   cover the piece, as the plan-weighted mean of the English tokens it is transported to
   ("ot_plan"); "ot_plan_all" also gives the old pieces the student texts still use (outside
   any new piece) their plan-weighted rows: the student reads only its own language, so
   their English rows serve nothing but as a start.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp

from optical_jax.adaptation.alignment import align_sample
from optical_jax.adaptation.embedding_init import (mean_of_pieces_rows, ot_plan_rows,
                                                   with_word_embeddings)
from optical_jax.adaptation.pieces import (extend_tokenizer, learn_pieces, piece_ids,
                                           wordpiece_spec)
from optical_jax.config import VOCAB_INITS
from optical_jax.models.hf_checkpoint import save_encoder


@dataclasses.dataclass
class AdaptedVocabulary:
  """What `adapt_student` did: the pieces, how each row was initialised."""

  pieces: list[str]
  init: str
  ot_initialised: int  # new rows the plans set (the rest: mean of pieces)
  directory: Path
  old_initialised: int = 0  # "ot_plan_all": old rows the plans set (the rest: as they were)


def adapt_student(student: Any, teacher: Any, pairs: Sequence[Sequence[str]], *, count: int,
                  init: str, directory: str | Path, alignment_pairs: int = 2000, seed: int = 0,
                  max_length: int = 64, epsilon: float = 0.05, center: bool = True
                  ) -> AdaptedVocabulary:
  """Learns `count` pieces from `pairs`' student side and writes the student with them to
  `directory` (a Hugging Face checkpoint directory for `load_encoder` and transformers).

  Args:
    student, teacher: `LoadedEncoder`s (the student as it starts).
    pairs: `(student text, teacher text, ...)` rows of the bitext.
    count: new pieces to learn at most.
    init: "mean_of_pieces", "ot_plan" or "ot_plan_all" (see `embedding_init`).
    directory: where to write.
    alignment_pairs: "ot_plan", "ot_plan_all": plans of this many pairs, sampled by `seed`.
    max_length, epsilon, center: the alignment's tokens per sentence and OT settings.

  Returns:
    An `AdaptedVocabulary`.

  Example::

    adapt_student(minilm, minilm, bitext, count=2000, init="ot_plan", directory="/tmp/ny")
    load_encoder("/tmp/ny").config.vocab_size  # 30522 + 2000
  """
  if init not in VOCAB_INITS:
    raise ValueError(f"init must be one of {VOCAB_INITS}, got {init!r}")
  spec = wordpiece_spec(student.tokenizer)
  old_vocab = student.tokenizer.get_vocab()
  if len(old_vocab) != student.config.vocab_size:
    raise ValueError(f"the student's tokenizer has {len(old_vocab)} tokens but its embeddings "
                     f"{student.config.vocab_size} rows; extending needs them equal")
  directory = Path(directory)
  pieces = learn_pieces([p[0] for p in pairs], student.tokenizer, count=count)
  if not pieces:
    raise ValueError("no new piece would save a token on this bitext")
  tokenizer = extend_tokenizer(student.tokenizer, pieces, directory)
  embeddings = student.params["embeddings"]["word_embeddings"]["embedding"]
  rows = mean_of_pieces_rows(embeddings, piece_ids(
      pieces, old_vocab, prefix=spec["continuing_subword_prefix"], unk=spec["unk_token"]))
  covered, old_covered, old_rows = 0, 0, None
  if init in ("ot_plan", "ot_plan_all"):
    alignment = align_sample(student, teacher, pairs, size=alignment_pairs, seed=seed,
                             max_length=max_length, epsilon=epsilon, center=center)
    ot_rows, mass = ot_plan_rows(student, teacher, alignment, tokenizer, embeddings,
                                 first_new_id=len(old_vocab), num_new=len(pieces),
                                 old_pieces=init == "ot_plan_all")
    n = len(pieces)
    rows = jnp.where(mass[:n, None] > 0, ot_rows[:n], rows)
    covered = int(jnp.sum(mass[:n] > 0))
    if init == "ot_plan_all":  # the old pieces the student texts use: translated rows too
      old_rows = jnp.where(mass[n:, None] > 0, ot_rows[n:], embeddings)
      old_covered = int(jnp.sum(mass[n:] > 0))
  params = with_word_embeddings(student.params, jnp.concatenate(
      [embeddings if old_rows is None else old_rows, rows]))
  config = dataclasses.replace(student.config, vocab_size=len(old_vocab) + len(pieces))
  hf_config = dict(student.hf_config, vocab_size=config.vocab_size)
  grown = dataclasses.replace(student, params=params, config=config, hf_config=hf_config,
                              _tokenizer=tokenizer)
  save_encoder(grown, directory)
  (directory / "vocabulary_adaptation.json").write_text(json.dumps(
      {"source": str(student.path), "init": init, "pieces": pieces,
       "ot_initialised": covered, "old_initialised": old_covered}, ensure_ascii=False,
      indent=1) + "\n", encoding="utf-8")
  return AdaptedVocabulary(pieces=pieces, init=init, ot_initialised=covered,
                           old_initialised=old_covered, directory=directory)
