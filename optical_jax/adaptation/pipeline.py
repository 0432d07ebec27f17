"""The adaptation levers from a config, each result cached on disk under
`config.runtime.cache_dir/adaptation/` by the content it depends on (checkpoints, bitext,
settings), so every run, resumed run, demo row and `eval.py` sees the same vocabulary and
lexicon.

- `adapted_student_dir(config, student, teacher)`: model.vocab_extension > 0; `build_models`
  loads the student from it.
- `code_switch_rows(config, rows)`: data.code_switch_rate > 0; the input pipeline's hook.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from optical_jax.adaptation import codeswitch, lexicon as lexicon_lib, vocabulary
from optical_jax.adaptation.alignment import align_sample
from optical_jax.data.bitext import rows_digest
from optical_jax.files.cache_files import sweep_temporaries, temporary
from optical_jax.files.fingerprint import checkpoint_digest
from optical_jax.files.layout import CacheDir

log = logging.getLogger("optical_jax")
_VERSION = 1  # bump when a cached result would change


def bitext_rows(config) -> list[tuple[str, str]]:
  """The (student, teacher) training pairs of `config.data` (a resolved config: paths) as
  written, before any augmentation, at most `data.limit`."""
  from optical_jax.data.inputs import configured_rows
  return [(r[0], r[1]) for r in configured_rows(config)]


def _key(*parts: Any) -> str:
  digest = hashlib.sha256(json.dumps([_VERSION, *parts], ensure_ascii=False,
                                     default=str).encode())
  return digest.hexdigest()[:20]


def _cache_dir(config) -> Path:
  return CacheDir(config.runtime.cache_dir).adaptation


def adapted_student_dir(config, student: Any, teacher: Any) -> Path:
  """The student of `config` with `model.vocab_extension` new pieces initialised per
  `model.vocab_init` (`vocabulary.adapt_student`), as a checkpoint directory, built on first
  use from the bitext (`bitext_rows`)."""
  m, rows = config.model, bitext_rows(config)
  key = _key("vocabulary", checkpoint_digest(student.path),
             checkpoint_digest(teacher.path), rows_digest(r[:2] for r in rows), m.vocab_extension,
             m.vocab_init, config.data.alignment_pairs, config.seed, config.data.max_length,
             float(config.ot.epsilon), bool(config.ot.center))
  directory = _cache_dir(config) / f"student-{key}"
  if (directory / "vocabulary_adaptation.json").is_file():
    return directory
  log.info("vocabulary adaptation: learning %d pieces (%s) into %s", m.vocab_extension,
           m.vocab_init, directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  sweep_temporaries(directory.parent)  # builds killed before they finished
  tmp = temporary(directory)
  shutil.rmtree(tmp, ignore_errors=True)
  result = vocabulary.adapt_student(
      student, teacher, rows, count=m.vocab_extension, init=m.vocab_init, directory=tmp,
      alignment_pairs=config.data.alignment_pairs, seed=config.seed,
      max_length=config.data.max_length, epsilon=float(config.ot.epsilon),
      center=bool(config.ot.center))
  try:
    os.replace(tmp, directory)
  except OSError:  # another process (of a multi-process run) finished first
    if not (directory / "vocabulary_adaptation.json").is_file():
      raise
    shutil.rmtree(tmp, ignore_errors=True)
  log.info("vocabulary adaptation: %d new pieces, %d initialised from OT plans%s",
           len(result.pieces), result.ot_initialised,
           f"; {result.old_initialised} old pieces' rows too" if result.old_initialised else "")
  return directory


def induce_lexicon_from_rows(student: Any, teacher: Any, rows: Sequence[Sequence[str]], *,
                             pairs: int, seed: int, max_length: int = 64,
                             epsilon: float = 0.05, center: bool = True, top_k: int = 3,
                             min_count: int = 5) -> tuple[lexicon_lib.Lexicon, dict[str, int]]:
  """The OT lexicon of a seeded sample of `pairs` rows, and the student words' counts in it."""
  alignment = align_sample(student, teacher, rows, size=pairs, seed=seed,
                           max_length=max_length, epsilon=epsilon, center=center)
  s_words = lexicon_lib.pretokenized_words(student.tokenizer, alignment.student_texts)
  t_words = lexicon_lib.pretokenized_words(teacher.tokenizer, alignment.teacher_texts)
  mass = lexicon_lib.word_alignment_mass(alignment.plans, alignment.student_word_ids,
                                         alignment.teacher_word_ids, s_words, t_words)
  counts = {}
  for words in s_words:
    for w in words:
      counts[w] = counts.get(w, 0) + 1
  return lexicon_lib.induce_lexicon(mass, counts, top_k=top_k, min_count=min_count), counts


def lexicon_for(config, rows: Sequence[Sequence[str]]) -> tuple[lexicon_lib.Lexicon,
                                                                 dict[str, int]]:
  """The OT lexicon of `config`'s initial student and teacher on `rows` (cached)."""
  from optical_jax.models.hf_checkpoint import load_encoder, resolve_checkpoint_dir
  from optical_jax.models.student import checkpoint_of
  teacher_dir = resolve_checkpoint_dir(*checkpoint_of(config.model, "teacher"))
  student_dir = (resolve_checkpoint_dir(*checkpoint_of(config.model, "student"))
                 if config.model.student else teacher_dir)
  key = _key("lexicon", checkpoint_digest(student_dir), checkpoint_digest(teacher_dir),
             rows_digest(r[:2] for r in rows), config.data.alignment_pairs, config.seed,
             config.data.max_length, float(config.ot.epsilon), bool(config.ot.center))
  path = _cache_dir(config) / f"lexicon-{key}.json"
  if path.is_file():
    stored = json.loads(path.read_text(encoding="utf-8"))
    return ({w: [tuple(t) for t in ts] for w, ts in stored["lexicon"].items()},
            stored["counts"])
  teacher = load_encoder(teacher_dir)
  student = teacher if student_dir == teacher_dir else load_encoder(student_dir)
  lexicon, counts = induce_lexicon_from_rows(
      student, teacher, rows, pairs=config.data.alignment_pairs, seed=config.seed,
      max_length=config.data.max_length, epsilon=float(config.ot.epsilon),
      center=bool(config.ot.center))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary(path)
  tmp.write_text(json.dumps({"lexicon": lexicon, "counts": {w: counts[w] for w in lexicon}},
                            ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, path)
  return lexicon, counts


def code_switch_rows(config, rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
  """`rows` code-switched at `config.data.code_switch_rate` with the OT lexicon of `rows`
  (`codeswitch.code_switch`, seeded by `config.seed`); `rows` itself when the rate is 0 or in
  the teacher stage."""
  rate = config.data.get("code_switch_rate", 0.0)
  if not rate or config.stage != "distill":
    return rows
  lexicon, _ = lexicon_for(config, rows)
  switched = codeswitch.code_switch(rows, lexicon_lib.best_translations(lexicon), rate=rate,
                                    seed=config.seed)
  log.info("code-switching: %d of %d training sentences changed (lexicon of %d words)",
           sum(a != b for a, b in zip(rows, switched)), len(rows), len(lexicon))
  return switched


def write_lexicon_sample(config, path: str | Path, *, rows: int = 30,
                         language: str = "Chichewa") -> Path:
  """Writes the `rows` most frequent entries of `config`'s OT lexicon (`lexicon_for` on the
  bitext) to `path` as a markdown table, with how it was made.

  Example (docs/lexicon_sample.md)::

    write_lexicon_sample(resolve_inputs(load_config("configs/demo.py")).config,
                         "docs/lexicon_sample.md")
  """
  lexicon, counts = lexicon_for(config, bitext_rows(config))
  header = (
      f"# {language}-English lexicon induced from OT plans (sample)\n\n"
      f"The {rows} most frequent {language} words of {config.data.alignment_pairs} bitext "
      f"pairs (seed {config.seed}) of `{config.data.train_file}`, each with its three English "
      "words by accumulated plan mass and their share of the word's mass. Plans: the initial "
      f"student ({config.model.student or config.model.teacher}) against the teacher, cost "
      f"1 - cos of contextual token embeddings{' centred' if config.ot.center else ''}, "
      f"epsilon {config.ot.epsilon}, idf marginals, special tokens left out; word pieces summed "
      "to words (lowercased), punctuation left out. Made by "
      "`optical_jax.adaptation.pipeline.write_lexicon_sample`.")
  return lexicon_lib.write_lexicon_sample(path, lexicon, counts, rows=rows, language=language,
                                          header=header)
