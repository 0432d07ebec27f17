"""The trained student as a Hugging Face checkpoint directory (weights, config.json, tokenizer,
sentence-transformers pooling files), for transformers, sentence-transformers and
`load_encoder` alike.

The export is exactly the evaluated model: it is written into a fresh directory beside the
target and renamed into place. It holds `.optical_jax_export.json` (`MARKER`): what produced
it and every file it wrote. `--overwrite` replaces only such an earlier export, holding nothing
else, named directly (not through a link); a directory a configured model loads from is never
a target.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from optical_jax.files.cache_files import sweep_temporaries
from optical_jax.files.fileio import temporary, write_text_atomic
from optical_jax.models.hf_checkpoint import save_encoder
from optical_jax.models.student import DistillationModels

log = logging.getLogger("optical_jax")

# (what, directory, whether a target inside it is fine): a target may be none of these
# directories nor hold one; inside one only where the flag says so (a workdir's hf/ folder).
Protected = tuple[str, "str | os.PathLike", bool]

MARKER = ".optical_jax_export.json"  # what made an export, and the files it wrote


class ExportError(ValueError):
  """A student that a Hugging Face encoder checkpoint cannot hold, or a target directory
  that must not be written."""


def _entries(directory: Path) -> set[str]:
  """Every file, folder and link under `directory`, as relative paths (links not followed)."""
  found = set()
  for root, folders, files in os.walk(directory):
    for name in folders + files:
      found.add((Path(root) / name).relative_to(directory).as_posix())
  return found


def _not_an_export(directory: Path) -> str | None:
  """Why `directory` is not an earlier export that `--overwrite` may replace, or None: it must
  hold our `MARKER` and nothing the export did not write."""
  marker = directory / MARKER
  if marker.is_symlink() or not marker.is_file():
    return f"holds no earlier export of optical_jax (no {MARKER})"
  try:
    written = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
  except (OSError, ValueError, KeyError, TypeError):
    return f"its {MARKER} is unreadable"
  foreign = sorted(_entries(directory) - written - {MARKER})
  if foreign:
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return f"holds what no export wrote ({shown})"
  return None


def check_export_target(directory: str | os.PathLike, *, protected: Iterable[Protected] = (),
                        overwrite: bool = False) -> Path:
  """The absolute target of an export to `directory`, once it is known not to replace what a
  configured model loads from (`protected`) and to be new or empty, or, with `overwrite`, an
  earlier export (`_not_an_export`) named directly, not through a link."""
  given = Path(directory).expanduser()
  target = given.resolve()
  for what, path, inside_ok in protected:
    source = Path(path).expanduser().resolve()
    relation = ("is" if target == source else "holds" if source.is_relative_to(target)
                else "is inside" if not inside_ok and target.is_relative_to(source) else None)
    if relation:
      raise ExportError(f"{directory}: {relation} {what}, {source}, which an export must never "
                        "replace; give another directory")
  if target.exists() and not target.is_dir():
    raise ExportError(f"{directory}: is a file; give a directory")
  held = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
  if held and not overwrite:
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    raise ExportError(f"{directory}: not empty ({len(held)} entries: {shown}); pass "
                      "--overwrite to replace an earlier export, or give a new or empty "
                      "directory")
  if held:
    if given.is_symlink():
      raise ExportError(f"{directory}: is a link to {target}; --overwrite replaces a "
                        "directory named directly, never through a link; its files are kept")
    problem = _not_an_export(target)
    if problem:
      raise ExportError(f"{directory}: {problem}; --overwrite replaces only an earlier export, "
                        "its files are kept; give a new or empty directory")
  return target


def export_student(models: DistillationModels, params: Any, directory: str | Path, *,
                   overwrite: bool = False, protected: Iterable[Protected] = (),
                   source: dict | None = None, max_length: int | None = None) -> Path:
  """Writes the student with trained `params` (`{"encoder": ...}`) to `directory`.

  The student's own tokenizer goes with it: a student with an extended vocabulary
  (`model.vocab_extension`, `optical_jax.adaptation`) is written with its new pieces and its
  grown `vocab_size`, so transformers' `AutoTokenizer`/`AutoModel` and `load_encoder` read
  it as trained (tests/models/test_vocabulary_extension.py).

  `directory` may be neither the teacher's nor the student's checkpoint directory (nor one
  of `protected`), nor hold one; a non-empty one only with `overwrite` and only when it holds
  an earlier export (`check_export_target`), and then it is replaced whole. The export is
  written beside it (`fileio.temporary`) with its `MARKER` (`source`: what produced it, e.g.
  workdir and step) and renamed into place: a failed or interrupted export leaves `directory`
  as it was.

  `max_length` (the run's `eval.max_length`) goes into `sentence_bert_config.json`, so that
  sentence-transformers truncates where evaluation did (its default is the model's 512); the
  student's query and passage prompts, if it has them, go with it
  (`config_sentence_transformers.json`)."""
  if "projection" in params:
    raise ExportError(
        f"the student ({models.student.config.hidden_size} wide) has a learned projection to "
        f"the teacher's {models.teacher.config.hidden_size} dimensions, which a Hugging Face "
        "encoder checkpoint cannot hold; use the workdir's Orbax checkpoint instead")
  protected = [*protected, ("the teacher's checkpoint", models.teacher.path, False),
               ("the student's checkpoint", models.student.path, False)]
  target = check_export_target(directory, protected=protected, overwrite=overwrite)
  target.parent.mkdir(parents=True, exist_ok=True)
  sweep_temporaries(target.parent, of=target.name)  # exports killed before they finished
  fresh = temporary(target)
  try:
    save_encoder(models.student, fresh, params["encoder"])
    if max_length:
      _write_sentence_transformers(fresh, models.student, max_length)
    write_text_atomic(fresh / MARKER, json.dumps(
        {"written_by": "optical_jax export", "source": source or {},
         "files": sorted(_entries(fresh))}, indent=2) + "\n")
    _replace_directory(fresh, target)
  except BaseException:  # Ctrl-C included: the target stays as it was
    shutil.rmtree(fresh, ignore_errors=True)
    raise
  log.info("wrote the student to %s", target)
  return target


def _write_sentence_transformers(directory: Path, student, max_length: int) -> None:
  """sentence-transformers' settings of its Transformer module: the tokens it keeps, and no
  lower-casing of its own (the tokenizer does what the run's did). It reads them only with a
  `modules.json`: a student without one gets its own, with the pooling `load_encoder` used."""
  (directory / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": int(max_length), "do_lower_case": False}, indent=2) + "\n",
      encoding="utf-8")
  if (directory / "modules.json").is_file():
    return
  modules = [{"idx": 0, "name": "0", "path": "",
               "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling",
               "type": "sentence_transformers.models.Pooling"}]
  if student.normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    (directory / "2_Normalize").mkdir(exist_ok=True)
  (directory / "1_Pooling").mkdir(exist_ok=True)
  (directory / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": student.config.hidden_size,
       "pooling_mode_cls_token": student.pooling == "cls",
       "pooling_mode_mean_tokens": student.pooling == "mean"}, indent=2) + "\n", encoding="utf-8")
  (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")


def _replace_directory(fresh: Path, target: Path) -> None:
  """`fresh` renamed to `target`; an old non-empty `target` (an earlier export) is moved aside
  first, then deleted (put back if the rename fails)."""
  if not (target.is_dir() and any(target.iterdir())):
    os.replace(fresh, target)  # a missing or empty directory is replaced in one rename
    return
  old = temporary(target)
  os.rename(target, old)
  try:
    os.rename(fresh, target)
  except BaseException:
    os.rename(old, target)
    raise
  shutil.rmtree(old, ignore_errors=True)
