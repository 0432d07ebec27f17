"""A run's set-up before its first step: every input checked (the workdir's config, the
collections, the training file, the token limits, a writable checkpoint directory) before
the slow work, then the models, the mesh and the training data (batches, teacher token
cache, token weights) built."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax

from optical_jax.config import ConfigError
from optical_jax.evaluation.check import check_collections
from optical_jax.evaluation.collections import collection_specs
from optical_jax.files.layout import CacheDir, Workdir
from optical_jax.models.student import DistillationModels, build_models
from optical_jax.runtime.mesh import data_mesh
from optical_jax.training import step as step_lib
from optical_jax.training.checkpoints import check_writable
from optical_jax.training.input_pipeline import (check_student_language, local_batch, make_batches,
                                                 make_teacher_cache, process_shards,
                                                 token_weights, training_rows)
from optical_jax.training.student_init import prepare_student
from optical_jax.training.workdir import check_workdir_config

log = logging.getLogger("optical_jax")


@dataclasses.dataclass
class TrainingData:
  """This process's training batches (`BucketedBatches`), the teacher token cache (None: the
  teacher runs in the step) and the token weights (None: uniform), fed to `mesh`."""

  batches: Any
  teacher_cache: Any
  weights: Any
  mesh: Any

  def build(self, step: int):
    """Global batch `step` on the devices, and (real tokens of every text column, examples)
    of the whole step, counted from this process's host masks times the processes (no device
    read). Runs in the prefetch thread."""
    batch = local_batch(self.batches, self.teacher_cache, step, self.weights)
    masks = [v for k, v in batch.items() if k.endswith("_mask")]
    processes = jax.process_count()
    counts = (int(sum(int(m.sum()) for m in masks)) * processes,
              int(masks[0].shape[0]) * processes)
    return step_lib.global_batch(batch, self.mesh), counts

  def report(self) -> None:
    """The teacher token cache's work, in the log."""
    if self.teacher_cache is not None:
      log.info("teacher token cache %s: encoded %d pairs, the rest were cached",
               self.teacher_cache.directory, self.teacher_cache.encoded)


@dataclasses.dataclass
class PreparedRun:
  """What a run trains and evaluates with: its `config` (the student prepared), the
  collections `specs` and the dev one (None without), the `models`, the `mesh` of every
  device, and the training `data`."""

  config: Any
  specs: list  # of ml_collections.ConfigDict, as collection_specs gives them
  dev_spec: Any
  models: DistillationModels
  mesh: Any
  data: TrainingData


def _check_lengths(config, models) -> None:
  for field in ("data", "eval"):
    limit = config[field].max_length
    for side, encoder in (("teacher", models.teacher), ("student", models.student)):
      if limit > encoder.config.max_length:
        raise ConfigError(f"config.{field}.max_length {limit} is longer than the "
                          f"{encoder.config.max_length} tokens the {side} ({encoder.path}) "
                          "has position embeddings for")


def prepare_run(config, workdir: Path, primary: bool) -> PreparedRun:
  """Checks a run's inputs, then builds its models and training data (`PreparedRun`)."""
  check_workdir_config(workdir, config)  # before any slow work
  specs = collection_specs(config)
  rows = training_rows(config)  # read and checked: a bad training file fails first
  # Every collection's files checked (a malformed line, judged documents missing from the
  # corpus) before the models load and the training data is tokenised, not at the end.
  check_collections(specs, config.runtime.cache_dir)
  if primary:
    check_student_language(config, rows)
  config = prepare_student(config, workdir, primary=primary)
  dev_spec = next((s for s in specs if s.name == config.eval.dev_collection), None)
  models = build_models(config)
  _check_lengths(config, models)
  if primary:  # before the training data is tokenised and the teacher cache made
    check_writable(Workdir(workdir).checkpoints)
  mesh = data_mesh()
  batches = make_batches(config, models, rows, CacheDir(config.runtime.cache_dir).tokens,
                         shards=process_shards(mesh, config.train.batch_size))
  del rows
  log.info("%d training examples, %d steps per epoch, %d device(s) in %d process(es), padded "
           "lengths %s", batches.num_examples, batches.steps_per_epoch, jax.device_count(),
           jax.process_count(), batches.shapes)
  teacher_cache = make_teacher_cache(config, models, batches, backend=jax.default_backend())
  data = TrainingData(batches, teacher_cache, token_weights(config, models, batches), mesh)
  return PreparedRun(config, specs, dev_spec, models, mesh, data)
