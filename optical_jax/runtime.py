"""Offline asset references (`pypi:`, `bible:`, `ciral:`, `bitext:`) made paths for a run.

The rest of process set-up lives beside it, one concern each: `host_memory` (malloc, first),
`console` (what the terminal shows), `distributed` (joining a multi-process run),
`compilation_cache`, and `host` (which process speaks, host copies of arrays).
"""

from __future__ import annotations

import ml_collections


def resolve_assets(config: ml_collections.ConfigDict, *, training: bool = True
                   ) -> ml_collections.ConfigDict:
  """A copy of `config` with asset references (`pypi:`, `bible:`, `ciral:`, `bitext:`) made
  paths, fetching or building them on first use; `training=False` leaves the training data."""
  import copy
  from optical_jax.assets import resolve
  # A deep copy: the collections are shared with the caller's config otherwise.
  config = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  r = lambda value: resolve(value, config.runtime.cache_dir) if value else value
  config.model.teacher, config.model.student = r(config.model.teacher), r(config.model.student)
  if training:
    config.data.train_file = r(config.data.train_file)
  for spec in config.eval.collections:
    for field in ("topics", "corpus", "qrels"):
      spec[field] = r(spec[field])
  return config
