"""Which checkpoint evaluation reads: the best by dev MAP, the latest, or a given step."""

from pathlib import Path

import numpy as np
import pytest

from optical_jax.training import checkpoints


def _workdir(tmp_path: Path) -> Path:
  latest, best = checkpoints.managers(tmp_path, keep=3)
  for step in (1, 2, 3):
    checkpoints.save(latest, step, {"params": {"w": np.full(2, step, np.float32)},
                                    "step": np.int32(step)})
  for step, dev_map in ((1, 0.2), (2, 0.5)):  # step 3 was not better
    checkpoints.save(best, step, {"params": {"w": np.full(2, step, np.float32)}},
                     metrics={"dev_MAP": dev_map})
  checkpoints.finish(latest, best)
  return tmp_path


@pytest.mark.parametrize("which, step, named", [("best", 2, "best"), ("latest", 3, "latest"),
                                                ("1", 1, "1"), (3, 3, "3")])
def test_restore_params_picks_the_asked_for_step(tmp_path, which, step, named):
  params, got, name = checkpoints.restore_params(_workdir(tmp_path), which)
  assert (got, name) == (step, named)
  np.testing.assert_array_equal(params["w"], np.full(2, step, np.float32))


def test_without_a_best_checkpoint_best_means_latest(tmp_path):
  latest, _ = checkpoints.managers(tmp_path, keep=3)
  checkpoints.save(latest, 4, {"params": {"w": np.zeros(2, np.float32)}})
  checkpoints.finish(latest)
  assert checkpoints.restore_params(tmp_path, "best")[1:] == (4, "latest")


@pytest.mark.parametrize("which, message", [("7", "no step 7 (have 1, 2, 3)"),
                                            ("newest", "--step must be 'best', 'latest' or a "
                                                       "number, got 'newest'")])
def test_a_step_that_is_not_there_is_named(tmp_path, which, message):
  with pytest.raises(checkpoints.CheckpointFault, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    checkpoints.restore_params(_workdir(tmp_path), which)


def test_an_empty_workdir_has_nothing_to_evaluate(tmp_path):
  with pytest.raises(checkpoints.CheckpointFault, match="no checkpoint to evaluate"):
    checkpoints.restore_params(tmp_path, "best")


def test_a_best_counts_only_once_its_checkpoint_is_on_disk(tmp_path, monkeypatch):
  """A resumed run must beat what best/ holds, not a dev MAP whose save failed."""
  import errno
  import orbax.checkpoint as ocp
  _, best = checkpoints.managers(tmp_path, keep=3)
  assert checkpoints.best_value(best, "dev_MAP") == float("-inf")
  checkpoints.save(best, 2, {"params": {"w": np.zeros(2, np.float32)}},
                   metrics={"dev_MAP": 0.5}, wait=True)
  original = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(checkpoints.CheckpointFault, match=r"cannot write checkpoint 4 \(No space "
                     r"left on device\); the last good checkpoint \(step 2\) is kept"):
    checkpoints.save(best, 4, {"params": {"w": np.ones(2, np.float32)}},
                     metrics={"dev_MAP": 0.7}, wait=True)
  _, reopened = checkpoints.managers(tmp_path, keep=3)  # the resumed run
  assert checkpoints.best_value(reopened, "dev_MAP") == 0.5
  assert checkpoints.restore_params(tmp_path, "best")[1:] == (2, "best")
