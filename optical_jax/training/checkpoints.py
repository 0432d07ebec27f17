"""Orbax checkpoints of a workdir: `checkpoints/` (the latest few train states, for resuming)
and `best/` (the parameters of the best step by dev MAP, for evaluation and export).

Checkpoints hold host (numpy) copies of the replicated trees, so they restore on any device
topology; every process takes part in saving and restoring, and Orbax writes host arrays from
process 0 only. A latest checkpoint that cannot be read is reported and the previous one is used instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from optical_jax.runtime import to_host

log = logging.getLogger("optical_jax")


class CheckpointFault(RuntimeError):
  """No usable checkpoint, or one that cannot be written; the message names the directory."""


def managers(workdir: Path, keep: int):
  """(latest, best) Orbax `CheckpointManager`s of `workdir`."""
  import orbax.checkpoint as ocp
  latest = ocp.CheckpointManager(
      workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
  best = ocp.CheckpointManager(
      workdir / "best", options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["dev_MAP"], best_mode="max", create=True))
  return latest, best


def save(manager, step: int, tree, metrics=None) -> None:
  """Starts saving host copies of `tree` as `step`; Orbax finishes in the background."""
  import orbax.checkpoint as ocp
  manager.save(step, args=ocp.args.StandardSave(to_host(tree)), metrics=metrics, force=True)


def _abstract(template):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), template)


def restore_latest(manager, template) -> tuple[Any, int | None]:
  """The newest readable checkpoint of `manager` as host arrays shaped like `template`, and
  its step; a checkpoint that fails to read is reported and the one before it tried.
  (template, None) when there is none."""
  import orbax.checkpoint as ocp
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(_abstract(template))), step
    except Exception as e:  # Orbax raises many types for truncated or corrupt files
      path = Path(manager.directory) / str(step)
      older = [s for s in steps if s < step]
      log.warning("checkpoint %s cannot be read (%s: %s); %s", path, type(e).__name__,
                  str(e).splitlines()[0][:200] if str(e) else "",
                  f"falling back to step {older[0]}" if older else "no older checkpoint")
  if steps:
    raise CheckpointFault(f"{manager.directory}: no checkpoint can be read (steps "
                          f"{', '.join(map(str, steps))}); delete the directory to start over")
  return template, None


def restore_params(workdir: Path, step: str | int = "best") -> tuple[Any, int, str]:
  """The trained parameters (numpy) of a workdir: `"best"` by dev MAP when there is one, else
  the latest; `"latest"`; or a step number. Returns (params, step, which)."""
  import orbax.checkpoint as ocp
  latest_dir, best_dir = workdir / "checkpoints", workdir / "best"
  which = str(step)
  if step == "best":
    best = ocp.CheckpointManager(best_dir) if best_dir.is_dir() else None
    if best is not None and best.latest_step() is not None:
      step = best.latest_step()
      return best.restore(step, args=ocp.args.StandardRestore())["params"], step, "best"
    which = "latest"
  manager = ocp.CheckpointManager(latest_dir) if latest_dir.is_dir() else None
  if manager is None or manager.latest_step() is None:
    raise CheckpointFault(f"{latest_dir}: no checkpoint to evaluate")
  if which == "latest" or step == "latest":
    step = manager.latest_step()
  try:
    step = int(step)
  except ValueError:
    raise CheckpointFault(f"--step must be 'best', 'latest' or a number, got {step!r}") from None
  if step not in manager.all_steps():
    raise CheckpointFault(f"{latest_dir}: no step {step} (have "
                          f"{', '.join(map(str, manager.all_steps()))})")
  return manager.restore(step, args=ocp.args.StandardRestore())["params"], step, which
