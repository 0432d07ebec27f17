"""Orbax checkpoints of a workdir: `checkpoints/` (the latest few train states, for resuming)
and `best/` (the parameters of the best step by dev MAP, for evaluation and export).

Checkpoints hold host (numpy) copies of the replicated trees, so they restore on any device
topology; every process takes part in saving and restoring, and Orbax writes host arrays from
process 0 only. A latest checkpoint that fails its own integrity check (damaged or missing
files) is reported, moved aside and the previous one used instead; any other failure to
restore (a changed shape, no memory, an I/O error) stops the run in one line, moving nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from optical_jax.files.fileio import create_temporary
from optical_jax.files.layout import Workdir
from optical_jax.runtime.host import to_host

log = logging.getLogger("optical_jax")


class CheckpointFault(RuntimeError):
  """No usable checkpoint, or one that cannot be written; the message names the directory."""


def _managers(workdir: Path, keep: int):
  """(latest, best) Orbax `CheckpointManager`s of `workdir`."""
  import orbax.checkpoint as ocp
  # Several processes save synchronously: two managers' background saves would race for the
  # same cross-process barriers.
  background = jax.process_count() == 1
  latest = ocp.CheckpointManager(
      Workdir(workdir).checkpoints, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=background))
  best = ocp.CheckpointManager(
      Workdir(workdir).best, options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["dev_MAP"], best_mode="max", create=True,
          enable_async_checkpointing=background))
  return latest, best


def _reason(error: BaseException) -> str:
  """Why a write failed, in a few words: the OS error's own when TensorStore names its code."""
  if getattr(error, "strerror", None):
    return error.strerror
  text = str(error)
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return os.strerror(int(code.group(1)))
  if "No space left" in text:
    return "No space left on device"
  return (text.strip().splitlines() or [type(error).__name__])[-1][:300]


def _fault(manager, step: int | None, error: BaseException) -> CheckpointFault:
  reason = _reason(error)
  kept = manager.latest_step()
  if kept == step:  # Orbax lists a step whose write failed until it drops it
    kept = max((s for s in manager.all_steps() if s != step), default=None)
  return CheckpointFault(
      f"{manager.directory}: cannot write checkpoint {step if step is not None else ''} "
      f"({reason}); " + (f"the last good checkpoint (step {kept}) is kept" if kept is not None
                         else "no checkpoint was written") +
      ". Free disk space or fix the directory's permissions, then rerun to resume.")


def check_writable(directory: Path) -> None:
  """Fails at once, naming `directory`, where a checkpoint could not be written."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    # A new file under a random name (never through a link planted in a shared workdir).
    probe, f = create_temporary(directory / ".write_probe", "wb")
    try:
      with f:
        f.write(b"0" * 4096)
    finally:
      probe.unlink(missing_ok=True)
  except OSError as e:
    raise CheckpointFault(f"{directory}: cannot write checkpoints ({e.strerror or e}); fix its "
                          "permissions or free disk space, or use another --workdir") from None


def kept(workdir: Path) -> str:
  """What a run stopped now leaves, in words: its last checkpoint, read from the disk (from
  any thread, with no manager: what a lost peer's message says)."""
  directory = Workdir(workdir).checkpoints
  steps = sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())
  return (f"the last checkpoint (step {steps[-1]}) is kept in {directory}"
          if steps else "no checkpoint was written yet")


class _Saves:
  """One Orbax manager and the step it last started saving: a background write that fails is
  reported later (at the next save, check or finish) and must be named by its own step."""

  def __init__(self, manager):
    self.manager, self.step = manager, None

  def save(self, step: int, tree, metrics=None, *, wait: bool = False) -> None:
    """Starts saving host copies of `tree` as `step`; Orbax finishes in the background, or
    before this returns with `wait`. The previous save's failure is raised first."""
    import orbax.checkpoint as ocp
    self.finish()
    try:
      self.manager.save(step, args=ocp.args.StandardSave(to_host(tree)), metrics=metrics,
                        force=True)
    except Exception as e:
      try:  # the last good checkpoint must be on disk, not in flight
        self.manager.wait_until_finished()
      except Exception:
        pass
      raise _fault(self.manager, step, e) from None
    self.step = step
    if wait:
      self.finish()

  def check(self) -> None:
    """A failed background save, without waiting for one in progress."""
    if not self.manager.is_saving_in_progress():
      self.finish()

  def finish(self) -> None:
    """Waits for the background save; its failure as a `CheckpointFault` naming its step."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # Orbax and TensorStore raise many types for a failed write
      raise _fault(self.manager, self.step, e) from None


def _best_value(manager, metric: str) -> float:
  """The best `metric` among the checkpoints `manager` holds on disk (-inf when none)."""
  values = []
  for step in manager.all_steps():
    try:
      values.append(float((manager.metrics(step) or {})[metric]))
    except (KeyError, TypeError, ValueError, OSError):
      continue  # a checkpoint without the metric cannot be the best
  return max(values, default=-math.inf)


def _abstract(template):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), template)


# TensorStore's status for a file that is truncated, undecodable or missing: what a checkpoint's
# own integrity check (sizes, compression frames, manifests) reports.
_DAMAGED = ("DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "NOT_FOUND")
_OK, _CORRUPT, _STOP = 0, 1, 2


def _damaged(error: BaseException) -> bool:
  """Whether reading a checkpoint failed its own integrity check: unparsable metadata, a file
  or item missing, or data TensorStore finds damaged; not memory, another OS error or
  anything else."""
  if isinstance(error, (json.JSONDecodeError, KeyError, FileNotFoundError)):
    return True
  if isinstance(error, (MemoryError, OSError)):
    return False
  return str(error).lstrip().startswith(_DAMAGED)


def _mismatch(manager, step: int, template) -> str | None:
  """How checkpoint `step`'s arrays differ from `template`'s (Orbax restores another shape
  silently, cut or padded): a few paths and shapes, or None."""
  import orbax.checkpoint as ocp
  metadata = ocp.StandardCheckpointHandler().metadata(
      Path(manager.directory) / str(step) / "default")  # the manager's item, as saved
  stored = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(metadata.tree).items()
            if hasattr(v, "shape")}
  wanted = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(
      ocp.tree.serialize_tree(template, keep_empty_nodes=True)).items() if hasattr(v, "shape")}
  name = lambda k: "/".join(map(str, k))
  differ = [f"{name(k)} {stored.get(k, 'absent')} in the checkpoint, "
            f"{wanted.get(k, 'absent')} in this run"
            for k in sorted(stored.keys() | wanted.keys(), key=str)
            if stored.get(k) != wanted.get(k)]
  if not differ:
    return None
  return "; ".join(differ[:3]) + (f"; and {len(differ) - 3} more" if len(differ) > 3 else "")


def _gather(verdict: int) -> np.ndarray:
  """Every process's verdict, in process order."""
  if jax.process_count() == 1:
    return np.array([verdict])
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.int32(verdict))).reshape(-1)


def _agree(verdict: int) -> tuple[int, int]:
  """The verdict of every process on one checkpoint: the worst of theirs (stop over corrupt
  over readable), and the first process that gave it."""
  verdicts = _gather(verdict)
  worst = int(verdicts.max())
  return worst, int(np.argmax(verdicts == worst))


def _read(manager, step: int, template) -> tuple[Any, int, str, str]:
  """(tree or None, verdict, why, what to do) for this process's read of checkpoint `step`."""
  import orbax.checkpoint as ocp
  try:
    problem = _mismatch(manager, step, template)
    if problem is not None:
      return (None, _STOP, f"its arrays do not fit this run's model: {problem}",
              "a change of shapes cannot be resumed; use another --workdir")
    return manager.restore(step, args=ocp.args.StandardRestore(_abstract(template))), _OK, "", ""
  except Exception as e:  # Orbax raises many types for truncated or corrupt files
    if _damaged(e):
      return None, _CORRUPT, (str(e).strip().splitlines() or [type(e).__name__])[-1][:200], ""
    return (None, _STOP, f"{type(e).__name__}: {_reason(e)}",
            ("free host memory" if isinstance(e, MemoryError) else "fix the cause")
            + " and rerun to resume")


def _restore_latest(manager, template, *, primary: bool = True) -> tuple[Any, int | None]:
  """The newest readable checkpoint of `manager` as host arrays shaped like `template`, and
  its step. A checkpoint that fails its own integrity check is reported, moved aside into
  `corrupt_checkpoints/` beside the directory (so the redone step can be saved again), and
  the one before it tried. Any other failure (arrays of other shapes than `template`'s, no
  memory, an I/O error) is a `CheckpointFault` naming it, with nothing moved. Every process
  reads and all act on the worst verdict. (template, None) when there is none."""
  steps = sorted(manager.all_steps(), reverse=True)
  directory = Path(manager.directory)
  for step in steps:
    tree, verdict, why, hint = _read(manager, step, template)
    worst, process = _agree(verdict)
    if worst == _OK:
      return tree, step
    if worst == _STOP:
      if verdict != _STOP:
        why, hint = f"process {process} cannot restore it", "see its message"
      raise CheckpointFault(f"{directory / str(step)}: cannot restore checkpoint {step} "
                            f"({why}); it is not damaged and nothing was moved; {hint}")
    older = [s for s in steps if s < step]
    aside = Workdir(directory.parent).corrupt_checkpoints / f"{directory.name}-{step}"
    while aside.exists():  # a step that was set aside before
      aside = aside.with_name(aside.name + "+")
    log.warning("checkpoint %s cannot be read (%s); moved to %s; %s", directory / str(step),
                why or f"process {process} found it damaged", aside,
                f"falling back to step {older[0]}" if older else "no older checkpoint")
    if primary:
      aside.parent.mkdir(parents=True, exist_ok=True)
      (directory / str(step)).rename(aside)
    manager.reload()
  if steps:
    raise CheckpointFault(f"{directory}: no checkpoint can be read (steps "
                          f"{', '.join(map(str, steps))}); delete the directory to start over")
  return template, None


class RunCheckpoints:
  """A run's checkpoints in `workdir`: `checkpoints/` (the latest `keep` train states) and
  `best/` (the parameters of the step with the best dev MAP). `best_value` is the dev MAP a
  new best must beat: the best checkpoint's on disk, whatever the metrics log recorded for
  saves that failed."""

  def __init__(self, workdir: Path, keep: int):
    latest, best = _managers(workdir, keep)
    self._latest, self._best = _Saves(latest), _Saves(best)
    self.best_value = _best_value(best, "dev_MAP")

  @property
  def latest(self):
    """The Orbax manager of `checkpoints/`."""
    return self._latest.manager

  @property
  def best(self):
    """The Orbax manager of `best/`."""
    return self._best.manager

  def latest_step(self) -> int | None:
    """The newest step in `checkpoints/` (None when none)."""
    return self.latest.latest_step()

  def restore(self, state, *, primary: bool = True) -> tuple[Any, int]:
    """The newest readable train state, shaped like `state` (host arrays), and its step; or
    (`state`, 0) when there is none. A checkpoint that fails its own integrity check is
    reported, moved aside and the one before it tried (`_restore_latest`)."""
    state, step = _restore_latest(self.latest, state, primary=primary)
    return state, step or 0

  def save(self, step: int, state, dev_map: float | None = None, *, latest: bool = True
           ) -> None:
    """Starts saving `state` (a `TrainState`) as the latest checkpoint `step` (with `latest`),
    and, when `dev_map` beats `best_value`, its parameters as the best, on disk before this
    returns: a best counts only once written (a failed save records nothing)."""
    if latest:
      self._latest.save(step, state)
    if dev_map is not None and dev_map > self.best_value:  # best/ is for evaluation
      self._best.save(step, {"params": state.params}, metrics={"dev_MAP": dev_map}, wait=True)
      self.best_value = dev_map

  def check(self) -> None:
    """Raises a failed background save without waiting for one in progress: the loop calls it
    at every log, evaluation and checkpoint step, so a run stops soon after its first failed
    save."""
    self._latest.check()
    self._best.check()

  def finish(self) -> None:
    """Waits for background saves, turning a write error into one clear `CheckpointFault`."""
    self._latest.finish()
    self._best.finish()


def restore_params(workdir: Path, step: str | int = "best") -> tuple[Any, int, str]:
  """The trained parameters (numpy) of a workdir: `"best"` by dev MAP when there is one, else
  the latest; `"latest"`; or a step number. Returns (params, step, which)."""
  import orbax.checkpoint as ocp
  latest_dir, best_dir = Workdir(workdir).checkpoints, Workdir(workdir).best
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
