"""The trained student as a Hugging Face checkpoint directory (weights, config.json, tokenizer,
sentence-transformers pooling files), for transformers, sentence-transformers and
`load_encoder` alike."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from optical_jax.models.student import DistillationModels

log = logging.getLogger("optical_jax")


class ExportError(ValueError):
  """A student that a Hugging Face encoder checkpoint cannot hold."""


def export_student(models: DistillationModels, params: Any, directory: str | Path) -> Path:
  """Writes the student with trained `params` (`{"encoder": ...}`) to `directory`.

  The student's own tokenizer goes with it: a student with an extended vocabulary
  (`model.vocab_extension`, `optical_jax.adaptation`) is written with its new pieces and its
  grown `vocab_size`, so transformers' `AutoTokenizer`/`AutoModel` and `load_encoder` read
  it as trained (tests/models/test_vocabulary_extension.py)."""
  if "projection" in params:
    raise ExportError(
        f"the student ({models.student.config.hidden_size} wide) has a learned projection to "
        f"the teacher's {models.teacher.config.hidden_size} dimensions, which a Hugging Face "
        "encoder checkpoint cannot hold; use the workdir's Orbax checkpoint instead")
  directory = models.student.save(directory, params["encoder"])
  log.info("wrote the student to %s", directory)
  return directory
