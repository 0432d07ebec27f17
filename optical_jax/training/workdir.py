"""The same configuration on resume: what a resumed run may change, and a refusal naming the
fields that would change what is trained. (One run at a time per workdir: `runtime.lock`;
a clean stop on Ctrl-C or SIGTERM: `runtime.stopping`.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from optical_jax.config import REVISIONS, ConfigError, defaults, flat_fields, resumable_fields
from optical_jax.files.layout import Workdir

log = logging.getLogger("optical_jax")

# Fields a resumed run may change freely (the schema's resumable ones): they do not change what
# is trained.
RESUMABLE_CHANGES = resumable_fields()


def check_resumed_config(saved_json: str, config) -> list[str]:
  """The fields of `config` that differ from the saved run's (`config.json`) and matter to
  training. Raises `ConfigError` naming them unless `config.train.resume_with_changes`;
  returns them so the caller can log the change."""
  saved = flat_fields(json.loads(saved_json))
  current = flat_fields(json.loads(config.to_json_best_effort()))
  # A field added since the run was saved counts at its default, which is what the run used.
  default = json.loads(json.dumps(defaults()))  # as JSON holds them (tuples as lists)
  value = lambda flat, k: flat[k] if k in flat else default.get(k)
  # A run saved before hub commits were recorded resumes at the commits resolved now.
  changed = sorted(k for k in saved.keys() | current.keys()
                   if value(saved, k) != value(current, k)
                   and not k.startswith(RESUMABLE_CHANGES)
                   and not (k in REVISIONS and k not in saved))
  if changed and not config.train.get("resume_with_changes", False):
    shown = "; ".join(f"config.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
    raise ConfigError(f"this workdir holds a run with another configuration ({shown}); use "
                      "another --workdir, or pass --config.train.resume_with_changes=True to "
                      "continue it under the new one")
  return changed


def check_workdir_config(workdir: Path, config) -> None:
  """`check_resumed_config` against the workdir's `config.json` when it holds checkpoints,
  logging the changes a resumed run was allowed to make."""
  saved = Workdir(workdir).config
  if saved.is_file() and any(p.name.isdigit() for p in Workdir(workdir).checkpoints.glob("*")):
    changed = check_resumed_config(saved.read_text(), config)
    if changed:
      log.warning("resuming under a changed configuration: %s", ", ".join(changed))
