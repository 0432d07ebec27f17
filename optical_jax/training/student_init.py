"""The student a run starts from, when it is built rather than loaded: prepared once into the
run's workdir (`WORKDIR/student_init`: tokenizer and initial weights), so that resuming,
`eval.py --checkpoint WORKDIR` and a copy of the workdir on another machine need neither the
training bitext nor the cache it was built in."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import ml_collections

from optical_jax.files.cache_files import sweep_temporaries, temporary
from optical_jax.files.layout import Workdir

log = logging.getLogger("optical_jax")

# The adaptation writes this file last; a directory holding it is complete.
COMPLETE = "vocabulary_adaptation.json"


def needs_preparing(config) -> bool:
  """Whether `config`'s student is built (a vocabulary extension), not a checkpoint's."""
  return (config.stage == "distill" and bool(config.model.get("vocab_extension", 0))
          and not config.model.get("student_init", ""))


def prepare_student(config: ml_collections.ConfigDict, workdir: str | Path | None, *,
                    primary: bool = True) -> ml_collections.ConfigDict:
  """`config` with `model.student_init` naming the directory of the student the run starts
  from when `needs_preparing(config)`: `workdir/student_init`, copied there on first use from
  the adaptation's cache (built from the bitext: `adaptation.pipeline.adapted_student_dir`)
  and reused as it is afterwards. `workdir` None (evaluating a run trained before workdirs
  held their student): the cache's directory. Only `primary` (process 0) writes; the others
  load the cache's identical directory. Any other config comes back unchanged."""
  if not needs_preparing(config):
    return config
  target = Workdir(workdir).student_init if workdir is not None else None
  if target is None or not (target / COMPLETE).is_file():
    from optical_jax.adaptation.pipeline import adapted_student_dir
    from optical_jax.models.hf_checkpoint import load_encoder
    from optical_jax.models.student import checkpoint_of
    name, revision = checkpoint_of(config.model, "teacher")
    teacher = load_encoder(name, revision=revision)
    name, revision = checkpoint_of(config.model, "student")
    initial = load_encoder(name, revision=revision) if config.model.student else teacher
    source = adapted_student_dir(config, initial, teacher)
    if target is None or not primary:
      target = source
    else:
      # A copy a killed run did not finish (in the workdir: that name's temporaries only).
      sweep_temporaries(target.parent, of=target.name)
      tmp = temporary(target)
      shutil.rmtree(tmp, ignore_errors=True)
      shutil.copytree(source, tmp)
      shutil.rmtree(target, ignore_errors=True)  # an incomplete copy of a killed run
      os.replace(tmp, target)
      log.info("the student this run starts from: %s", target)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.student_init = str(target)
  return config
