"""Vocabulary adaptation: WordPiece pieces learned from the student's language, added to the
student's tokenizer and grown word-embedding matrix.

1. `learn_pieces`: a WordPiece vocabulary is trained (the `tokenizers` trainer, with the
   student tokenizer's own normaliser and pre-tokeniser) on the bitext's student side; the
   pieces not yet in the student's vocabulary are ranked by the tokens they save (uses x
   (old pieces per piece - 1)) and the first `count` kept.
2. `extend_tokenizer`: they are appended to the tokenizer's WordPiece vocabulary (ids
   `V, ..., V + count - 1`), so greedy longest-match uses them inside words.
3. New embedding rows, two ways:
   * `mean_of_pieces_rows` (the FOCUS/WECHSEL-style baseline): the mean of the old
     embeddings of the pieces the new piece used to be split into;
   * `plan_weighted_rows` ("ot_plan"): the OT plan between the initial student's contextual
     token embeddings of a student-language sentence (old tokenizer) and the teacher's of its
     English translation says where each occurrence of the new piece (its old pieces' rows of
     the plan) sends its mass; the new row is the plan-weighted mean of the *input*
     embeddings of those English tokens. The plans have idf marginals (`alignment`): with
     uniform ones a student that does not know the language yet sends most mass to "the",
     "and" and commas, and every new row became nearly their mean. The plan lives in the
     teacher's output space (contextual token embeddings), but a
     word-embedding row must live in the student's input space: the English tokens are
     therefore mapped through the student's own input embedding matrix
     (`teacher_token_targets`): the row of the same token when student and teacher share a
     vocabulary (the demo, where the student starts as the teacher, so these are exactly the
     teacher's input embeddings), else the mean of the student's embeddings of the pieces the
     student's tokenizer splits the English token into. Pieces no sampled occurrence covers
     keep the mean-of-pieces row.
4. `adapt_student`: all of it, written as a Hugging Face checkpoint directory (weights,
   config.json with the new vocab_size, the extended tokenizer) that `load_encoder` and
   transformers load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.config import VOCAB_INITS

_EMBEDDINGS = ("embeddings", "word_embeddings", "embedding")


def _wordpiece_spec(tokenizer: Any) -> dict:
  """The WordPiece model section of a fast tokenizer's JSON; ValueError for other models."""
  spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
  if spec.get("type") != "WordPiece":
    raise ValueError(f"vocabulary extension needs a WordPiece (BERT-family) tokenizer; this one "
                     f"is {spec.get('type')!r}")
  return spec


def wordpiece_split(piece: str, vocab: Mapping[str, int], *, prefix: str = "##",
                    unk: str = "[UNK]") -> list[str]:
  """Greedy longest-match WordPiece split of one word or piece over `vocab`.

  A piece starting with `prefix` is a word continuation and splits into continuation pieces.

  >>> wordpiece_split("ndipo", {"n": 0, "##di": 1, "##po": 2, "##dipo": 3})
  ['n', '##dipo']
  >>> wordpiece_split("##dipo", {"##di": 1, "##po": 2})
  ['##di', '##po']
  >>> wordpiece_split("xyz", {"x": 0})
  ['[UNK]']
  """
  continuation = piece.startswith(prefix)
  chars = piece[len(prefix):] if continuation else piece
  pieces, start = [], 0
  while start < len(chars):
    end = len(chars)
    while end > start:
      sub = (prefix if start > 0 or continuation else "") + chars[start:end]
      if sub in vocab:
        break
      end -= 1
    else:
      return [unk]
    pieces.append(sub)
    start = end
  return pieces


def word_counts(texts: Sequence[str], tokenizer: Any) -> Counter:
  """How often each pre-tokenised word (the tokenizer's normalisation: MiniLM lowercases)
  occurs in `texts`."""
  backend = tokenizer.backend_tokenizer
  counts = Counter()
  for text in texts:
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
  return counts


def learn_pieces(texts: Sequence[str], tokenizer: Any, *, count: int,
                 trained_vocab_size: int | None = None, min_frequency: int = 2) -> list[str]:
  """Up to `count` new WordPiece pieces for `texts`' language, most tokens saved first.

  A WordPiece vocabulary of `trained_vocab_size` (default `max(2 * count, 1000)`) is trained
  on `texts` with `tokenizer`'s normaliser and pre-tokeniser. Each piece not in `tokenizer`'s
  vocabulary scores (its uses when the training words are split with the learned
  vocabulary) x (the old pieces it splits into - 1); pieces that save nothing are dropped.
  Ties go to the piece that sorts first, so the result depends on `texts` only.

  Args:
    texts: student-language sentences.
    tokenizer: the student's transformers fast tokenizer (WordPiece).
    count: how many pieces to keep at most.
    trained_vocab_size: size of the learned vocabulary.
    min_frequency: the trainer's minimum pair frequency.

  Returns:
    The new pieces (`##` marks word continuations), best first.

  Example::

    learn_pieces(chichewa_sentences, minilm.tokenizer, count=3)  # ['ndipo', '##nse', 'kuti']
  """
  from tokenizers import Tokenizer, models, trainers
  spec = _wordpiece_spec(tokenizer)
  prefix, unk = spec["continuing_subword_prefix"], spec["unk_token"]
  backend = tokenizer.backend_tokenizer
  learner = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix=prefix))
  learner.normalizer = backend.normalizer
  learner.pre_tokenizer = backend.pre_tokenizer
  size = trained_vocab_size or max(2 * count, 1000)
  learner.train_from_iterator(list(texts), trainers.WordPieceTrainer(
      vocab_size=size, min_frequency=min_frequency, special_tokens=[unk],
      continuing_subword_prefix=prefix, show_progress=False))
  learned, old = learner.get_vocab(), tokenizer.get_vocab()
  uses = Counter()
  for word, freq in word_counts(texts, tokenizer).items():
    for piece in wordpiece_split(word, learned, prefix=prefix, unk=unk):
      if piece not in old and piece != unk:
        uses[piece] += freq
  saved = {p: n * (len(wordpiece_split(p, old, prefix=prefix, unk=unk)) - 1)
           for p, n in uses.items()}
  ranked = sorted((p for p, s in saved.items() if s > 0), key=lambda p: (-saved[p], p))
  return ranked[:count]


def extend_tokenizer(tokenizer: Any, pieces: Sequence[str], directory: str | Path) -> Any:
  """Writes `tokenizer` with `pieces` appended to its WordPiece vocabulary to `directory`
  (tokenizer.json, tokenizer_config.json, vocab.txt) and returns it loaded from there.

  The new pieces get ids `len(vocab), ..., len(vocab) + len(pieces) - 1`.

  Raises:
    ValueError: not a WordPiece tokenizer, its ids are not `0..V-1`, or a piece is already
      in the vocabulary.

  Example::

    new = extend_tokenizer(minilm.tokenizer, ["ndipo"], "/tmp/ny")
    new.tokenize("Ndipo")  # ['ndipo'] (was ['n', '##di', '##po'])
  """
  from transformers import AutoTokenizer
  _wordpiece_spec(tokenizer)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save_pretrained(str(directory))
  path = directory / "tokenizer.json"
  spec = json.loads(path.read_text(encoding="utf-8"))
  vocab = spec["model"]["vocab"]
  if sorted(vocab.values()) != list(range(len(vocab))):
    raise ValueError("the tokenizer's WordPiece ids are not 0..V-1")
  present = [p for p in pieces if p in vocab]
  if present or len(set(pieces)) != len(pieces):
    raise ValueError(f"pieces must be new and distinct; already there: {present[:5]}")
  for i, piece in enumerate(pieces):
    vocab[piece] = len(vocab)
  path.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
  by_id = sorted(vocab, key=vocab.get)
  (directory / "vocab.txt").write_text("".join(f"{p}\n" for p in by_id), encoding="utf-8")
  extended = AutoTokenizer.from_pretrained(str(directory))
  if len(extended) != len(by_id):
    raise ValueError(f"{directory}: the extended tokenizer has {len(extended)} tokens, "
                     f"expected {len(by_id)}")
  return extended


def piece_ids(pieces: Sequence[str], vocab: Mapping[str, int], *, prefix: str = "##",
              unk: str = "[UNK]") -> list[list[int]]:
  """The old ids each new piece used to be split into.

  >>> piece_ids(["##dipo"], {"##di": 7, "##po": 9})
  [[7, 9]]
  """
  return [[vocab[p] for p in wordpiece_split(piece, vocab, prefix=prefix, unk=unk)]
          for piece in pieces]


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
                       target_embeddings: jax.Array, *, num_new: int,
                       chunk_size: int = 256) -> tuple[jax.Array, jax.Array]:
  """The "ot_plan" rows: for each new piece, the plan-weighted mean of the target embeddings
  of the teacher tokens its occurrences are transported to.

  new_row[k] = sum_{b,i: piece(b,i)=k} sum_j P[b,i,j] T[teacher_ids[b,j]] / mass[k],
  mass[k] = sum_{b,i: piece(b,i)=k} sum_j P[b,i,j].

  Args:
    plans: `[B, Ls, Lt]` OT plans (rows: the student's old tokens).
    piece_of_token: `[B, Ls]` int: which new piece (0..num_new-1) each old student token is
      part of, -1 for none.
    teacher_ids: `[B, Lt]` int teacher token ids.
    target_embeddings: `[Vt, d]` each teacher token's embedding in the student's input space
      (`teacher_token_targets`).
    num_new: `N`, the number of new pieces.
    chunk_size: pairs per step (bounds memory at `chunk_size * Lt * d` floats).

  Returns:
    `(rows [N, d], mass [N])` float32; rows with no mass are zeros.

  >>> plans = jnp.array([[[0.5, 0.0], [0.0, 0.5]]])  # token 0 -> teacher 0, token 1 -> 1
  >>> targets = jnp.array([[1., 0.], [0., 1.], [9., 9.]])
  >>> rows, mass = plan_weighted_rows(plans, jnp.array([[0, -1]]), jnp.array([[1, 2]]),
  ...                                 targets, num_new=1)
  >>> rows, mass
  (Array([[0., 1.]], dtype=float32), Array([0.5], dtype=float32))
  """
  plans = np.asarray(plans, np.float32)
  segments = np.where(np.asarray(piece_of_token) >= 0, piece_of_token, num_new)  # num_new: none
  teacher_ids = np.asarray(teacher_ids)
  targets = jnp.asarray(target_embeddings, jnp.float32)
  sums = jnp.zeros((num_new + 1, targets.shape[1]), jnp.float32)
  mass = jnp.zeros((num_new + 1,), jnp.float32)
  for start in range(0, plans.shape[0], chunk_size):
    part = slice(start, start + chunk_size)
    chunk_sums, chunk_mass = _segment_sums(plans[part], segments[part], teacher_ids[part],
                                           targets, num_new + 1)
    sums, mass = sums + chunk_sums, mass + chunk_mass
  sums, mass = sums[:num_new], mass[:num_new]
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


@dataclasses.dataclass
class AdaptedVocabulary:
  """What `adapt_student` did: the pieces, how each row was initialised."""

  pieces: list[str]
  init: str
  ot_initialised: int  # rows the plans set (the rest: mean of pieces)
  directory: Path


def grow_embeddings(params: Mapping, rows: jax.Array) -> dict:
  """`params` (an encoder tree) with `rows` `[N, d]` appended to its word embeddings.

  >>> p = {"embeddings": {"word_embeddings": {"embedding": jnp.zeros((3, 2))}}}
  >>> grow_embeddings(p, jnp.ones((1, 2)))["embeddings"]["word_embeddings"]["embedding"].shape
  (4, 2)
  """
  grown = jax.tree_util.tree_map(lambda x: x, dict(params))
  node = grown
  for key in _EMBEDDINGS[:-1]:
    node[key] = dict(node[key])
    node = node[key]
  node[_EMBEDDINGS[-1]] = jnp.concatenate(
      [jnp.asarray(node[_EMBEDDINGS[-1]], jnp.float32), jnp.asarray(rows, jnp.float32)])
  return grown


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
    init: "mean_of_pieces" or "ot_plan" (see the module docstring).
    directory: where to write.
    alignment_pairs: "ot_plan": plans of this many pairs, sampled by `seed`.
    max_length, epsilon, center: the alignment's tokens per sentence and OT settings.

  Returns:
    An `AdaptedVocabulary`.

  Example::

    adapt_student(minilm, minilm, bitext, count=2000, init="ot_plan", directory="/tmp/ny")
    load_encoder("/tmp/ny").config.vocab_size  # 30522 + 2000
  """
  from optical_jax.adaptation.alignment import compute_alignment, sample_pairs
  if init not in VOCAB_INITS:
    raise ValueError(f"init must be one of {VOCAB_INITS}, got {init!r}")
  spec = _wordpiece_spec(student.tokenizer)
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
  covered = 0
  if init == "ot_plan":
    chosen = [pairs[i] for i in sample_pairs(pairs, size=alignment_pairs, seed=seed)]
    alignment = compute_alignment(student, teacher, [p[0] for p in chosen],
                                  [p[1] for p in chosen], max_length=max_length,
                                  epsilon=epsilon, center=center)
    new = tokenizer([p[0] for p in chosen], truncation=True, max_length=max_length,
                    padding="max_length", return_offsets_mapping=True)
    piece_of_token = occurrences(np.asarray(new["input_ids"]), np.asarray(new["offset_mapping"]),
                                 alignment.student_offsets, alignment.student_mask,
                                 first_new_id=len(old_vocab))
    targets = teacher_token_targets(student, teacher, np.asarray(embeddings),
                                    alignment.teacher_ids)
    ot_rows, mass = plan_weighted_rows(alignment.plans, piece_of_token, alignment.teacher_ids,
                                       targets, num_new=len(pieces))
    rows = jnp.where(mass[:, None] > 0, ot_rows, rows)
    covered = int(jnp.sum(mass > 0))
  params = grow_embeddings(student.params, rows)
  config = dataclasses.replace(student.config, vocab_size=len(old_vocab) + len(pieces))
  hf_config = dict(student.hf_config, vocab_size=config.vocab_size)
  grown = dataclasses.replace(student, params=params, config=config, hf_config=hf_config,
                              _tokenizer=tokenizer)
  grown.save(directory)
  (directory / "vocabulary_adaptation.json").write_text(json.dumps(
      {"source": str(student.path), "init": init, "pieces": pieces,
       "ot_initialised": covered}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
  return AdaptedVocabulary(pieces=pieces, init=init, ot_initialised=covered, directory=directory)
