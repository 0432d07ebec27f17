"""Which checkpoint evaluation reads: the best by dev MAP, the latest, or a given step."""

import re
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


def test_a_planted_probe_link_leaves_its_target_untouched(tmp_path):
  victim = tmp_path / "victim.bin"
  victim.write_bytes(b"precious")
  directory = tmp_path / "W" / "checkpoints"
  directory.mkdir(parents=True)
  (directory / ".write_probe").symlink_to(victim)  # in a shared or received workdir
  checkpoints.check_writable(directory)
  assert victim.read_bytes() == b"precious"
  assert [p.name for p in directory.iterdir()] == [".write_probe"]  # no probe left behind


def _weights(step: int) -> np.ndarray:
  return np.random.default_rng(step).standard_normal(4096).astype(np.float32)


def _two_steps(tmp_path: Path):
  """A manager holding steps 1 and 2 of `{"params": {"w": [4096]}}` (`_weights(step)`: data
  files, not values kept inline), and that tree."""
  latest, _ = checkpoints.managers(tmp_path, keep=3)
  for step in (1, 2):
    checkpoints.save(latest, step, {"params": {"w": _weights(step)}})
  checkpoints.finish(latest)
  return latest, {"params": {"w": np.zeros(4096, np.float32)}}


def _nothing_moved(tmp_path: Path, latest):
  latest.reload()
  assert latest.all_steps() == [1, 2] and not (tmp_path / "corrupt_checkpoints").exists()


def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_restored(tmp_path, caplog):
  latest, template = _two_steps(tmp_path)
  for data in (tmp_path / "checkpoints" / "2").glob("default/ocdbt.process_0/d/*"):
    data.write_bytes(data.read_bytes()[:10])  # truncated array data
  tree, step = checkpoints.restore_latest(latest, template)
  assert step == 1 and (tree["params"]["w"] == _weights(1)).all()
  assert (tmp_path / "corrupt_checkpoints" / "checkpoints-2").is_dir()
  assert "falling back to step 1" in caplog.text


def test_a_shape_change_stops_in_one_line_and_moves_nothing(tmp_path):
  latest, _ = _two_steps(tmp_path)
  wider = {"params": {"w": np.zeros(4097, np.float32)}}  # resume_with_changes of a dimension
  with pytest.raises(checkpoints.CheckpointFault) as caught:
    checkpoints.restore_latest(latest, wider)
  message = str(caught.value)
  assert "\n" not in message and "checkpoint 2 (its arrays do not fit this run's model: " \
      "params/w (4096,) in the checkpoint, (4097,) in this run)" in message, message
  assert "nothing was moved" in message
  _nothing_moved(tmp_path, latest)


@pytest.mark.parametrize("error, said", [
    (MemoryError(), "MemoryError: MemoryError); it is not damaged and nothing was moved; free "
                    "host memory"),
    (OSError(5, "Input/output error"), "OSError: Input/output error); it is not damaged")])
def test_memory_and_io_errors_stop_in_one_line_and_move_nothing(tmp_path, monkeypatch, error,
                                                                said):
  latest, template = _two_steps(tmp_path)

  def fails(*args, **kwargs):
    raise error

  monkeypatch.setattr(latest, "restore", fails)
  with pytest.raises(checkpoints.CheckpointFault, match=re.escape(said)):
    checkpoints.restore_latest(latest, template)
  _nothing_moved(tmp_path, latest)


@pytest.mark.parametrize("other, outcome", [("stop", "fault"), ("corrupt", "step 1")])
def test_every_process_acts_on_the_worst_verdict(tmp_path, monkeypatch, other, outcome):
  """This process reads step 2 well; process 1 could not (or found it damaged): both stop
  (or both fall back to step 1), never one resuming where the other does not."""
  latest, template = _two_steps(tmp_path)
  theirs = {"stop": checkpoints._STOP, "corrupt": checkpoints._CORRUPT}[other]
  gathered = []

  def gather(verdict):  # as two processes' allgather: ours, then theirs
    gathered.append(int(verdict))
    return np.array([verdict, theirs if len(gathered) == 1 else verdict])

  monkeypatch.setattr(checkpoints, "_gather", gather)
  if outcome == "fault":
    with pytest.raises(checkpoints.CheckpointFault, match="checkpoint 2 \\(process 1 cannot "
                       "restore it\\); it is not damaged and nothing was moved"):
      checkpoints.restore_latest(latest, template)
    _nothing_moved(tmp_path, latest)
  else:
    tree, step = checkpoints.restore_latest(latest, template)
    assert step == 1 and (tree["params"]["w"] == _weights(1)).all()
    assert (tmp_path / "corrupt_checkpoints" / "checkpoints-2").is_dir()
  assert gathered[0] == checkpoints._OK
