"""A run's checkpoints (`RunCheckpoints`: latest and best saved together, a failed save named
by its step, a damaged checkpoint set aside) and which one evaluation reads: the best by dev
MAP, the latest, or a given step."""

import re
from pathlib import Path

import numpy as np
import pytest

from optical_jax.training import checkpoints
from optical_jax.training.checkpoints import RunCheckpoints
from optical_jax.training.state import TrainState


def _state(step: int, w: np.ndarray | None = None) -> TrainState:
  w = np.full(2, step, np.float32) if w is None else w
  return TrainState(step=np.int32(step), params={"w": w}, opt_state={})


def _workdir(tmp_path: Path) -> Path:
  run = RunCheckpoints(tmp_path, keep=3)
  for step, dev_map in ((1, 0.2), (2, 0.5), (3, 0.4)):  # step 3 was not better
    run.save(step, _state(step), dev_map)
  run.finish()
  return tmp_path


@pytest.mark.parametrize("which, step, named", [("best", 2, "best"), ("latest", 3, "latest"),
                                                ("1", 1, "1"), (3, 3, "3")])
def test_restore_params_picks_the_asked_for_step(tmp_path, which, step, named):
  params, got, name = checkpoints.restore_params(_workdir(tmp_path), which)
  assert (got, name) == (step, named)
  np.testing.assert_array_equal(params["w"], np.full(2, step, np.float32))


def test_without_a_best_checkpoint_best_means_latest(tmp_path):
  run = RunCheckpoints(tmp_path, keep=3)
  run.save(4, _state(4))
  run.finish()
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
  run = RunCheckpoints(tmp_path, keep=3)
  assert run.best_value == float("-inf")
  run.save(2, _state(2), 0.5, latest=False)
  assert run.best_value == 0.5 and run.latest_step() is None
  original = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(checkpoints.CheckpointFault, match=r"cannot write checkpoint 4 \(No space "
                     r"left on device\); the last good checkpoint \(step 2\) is kept"):
    run.save(4, _state(4), 0.7, latest=False)
  assert run.best_value == 0.5
  assert RunCheckpoints(tmp_path, keep=3).best_value == 0.5  # the resumed run
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
  """`RunCheckpoints` holding steps 1 and 2 of a state whose params are `{"w": [4096]}`
  (`_weights(step)`: data files, not values kept inline), and a template of that state."""
  run = RunCheckpoints(tmp_path, keep=3)
  for step in (1, 2):
    run.save(step, _state(step, _weights(step)))
  run.finish()
  return run, _state(0, np.zeros(4096, np.float32))


def _nothing_moved(tmp_path: Path, run):
  run.latest.reload()
  assert run.latest.all_steps() == [1, 2] and not (tmp_path / "corrupt_checkpoints").exists()


def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_restored(tmp_path, caplog):
  run, template = _two_steps(tmp_path)
  for data in (tmp_path / "checkpoints" / "2").glob("default/ocdbt.process_0/d/*"):
    data.write_bytes(data.read_bytes()[:10])  # truncated array data
  state, step = run.restore(template)
  assert step == 1 and (state.params["w"] == _weights(1)).all()
  assert (tmp_path / "corrupt_checkpoints" / "checkpoints-2").is_dir()
  assert "falling back to step 1" in caplog.text


def test_a_shape_change_stops_in_one_line_and_moves_nothing(tmp_path):
  run, _ = _two_steps(tmp_path)
  wider = _state(0, np.zeros(4097, np.float32))  # resume_with_changes of a dimension
  with pytest.raises(checkpoints.CheckpointFault) as caught:
    run.restore(wider)
  message = str(caught.value)
  assert "\n" not in message and "checkpoint 2 (its arrays do not fit this run's model: " \
      "params/w (4096,) in the checkpoint, (4097,) in this run)" in message, message
  assert "nothing was moved" in message
  _nothing_moved(tmp_path, run)


@pytest.mark.parametrize("error, said", [
    (MemoryError(), "MemoryError: MemoryError); it is not damaged and nothing was moved; free "
                    "host memory"),
    (OSError(5, "Input/output error"), "OSError: Input/output error); it is not damaged")])
def test_memory_and_io_errors_stop_in_one_line_and_move_nothing(tmp_path, monkeypatch, error,
                                                                said):
  run, template = _two_steps(tmp_path)

  def fails(*args, **kwargs):
    raise error

  monkeypatch.setattr(run.latest, "restore", fails)
  with pytest.raises(checkpoints.CheckpointFault, match=re.escape(said)):
    run.restore(template)
  _nothing_moved(tmp_path, run)


@pytest.mark.parametrize("other, outcome", [("stop", "fault"), ("corrupt", "step 1")])
def test_every_process_acts_on_the_worst_verdict(tmp_path, monkeypatch, other, outcome):
  """This process reads step 2 well; process 1 could not (or found it damaged): both stop
  (or both fall back to step 1), never one resuming where the other does not."""
  run, template = _two_steps(tmp_path)
  theirs = {"stop": checkpoints._STOP, "corrupt": checkpoints._CORRUPT}[other]
  gathered = []

  def gather(verdict):  # as two processes' allgather: ours, then theirs
    gathered.append(int(verdict))
    return np.array([verdict, theirs if len(gathered) == 1 else verdict])

  monkeypatch.setattr(checkpoints, "_gather", gather)
  if outcome == "fault":
    with pytest.raises(checkpoints.CheckpointFault, match="checkpoint 2 \\(process 1 cannot "
                       "restore it\\); it is not damaged and nothing was moved"):
      run.restore(template)
    _nothing_moved(tmp_path, run)
  else:
    state, step = run.restore(template)
    assert step == 1 and (state.params["w"] == _weights(1)).all()
    assert (tmp_path / "corrupt_checkpoints" / "checkpoints-2").is_dir()
  assert gathered[0] == checkpoints._OK


def test_latest_and_best_are_saved_together_and_a_resumed_run_restores_the_latest(tmp_path):
  run = RunCheckpoints(tmp_path, keep=3)
  run.save(5, _state(5), 0.9)  # a new best: both
  run.save(6, _state(6), 0.3)  # not better: the latest only
  run.save(7, _state(7), 0.95, latest=False)  # an evaluation between checkpoint steps
  run.finish()
  assert run.latest.all_steps() == [5, 6] and run.best_value == 0.95
  assert checkpoints.restore_params(tmp_path, "best")[1:] == (7, "best")
  resumed = RunCheckpoints(tmp_path, keep=3)
  assert resumed.best_value == 0.95
  state, step = resumed.restore(_state(0))
  assert step == 6 and int(state.step) == 6
  np.testing.assert_array_equal(state.params["w"], np.full(2, 6, np.float32))


def test_an_empty_workdir_restores_the_template_at_step_0(tmp_path):
  template = _state(0)
  state, step = RunCheckpoints(tmp_path, keep=3).restore(template)
  assert step == 0 and state is template


def test_a_failed_background_save_surfaces_at_check_named_by_its_step(tmp_path, monkeypatch):
  """Orbax reports a background write's failure at the next wait: `check` raises it, named by
  the step that was being saved, once no save is in progress (it never waits for one)."""
  import errno
  run = RunCheckpoints(tmp_path, keep=3)
  run.save(2, _state(2))
  run.save(3, _state(3))
  run.latest.wait_until_finished()

  def failed():
    raise OSError(errno.ENOSPC, "No space left on device")

  in_progress = {"now": True}
  monkeypatch.setattr(run.latest, "wait_until_finished", failed)
  monkeypatch.setattr(run.latest, "is_saving_in_progress", lambda: in_progress["now"])
  run.check()  # still writing: nothing to report yet, and no wait
  in_progress["now"] = False
  with pytest.raises(checkpoints.CheckpointFault, match=r"checkpoints: cannot write checkpoint "
                     r"3 \(No space left on device\); the last good checkpoint \(step 2\) is "
                     r"kept"):
    run.check()
  with pytest.raises(checkpoints.CheckpointFault, match="cannot write checkpoint 3 "):
    run.finish()


def test_what_a_stopped_run_keeps_is_read_from_the_disk(tmp_path):
  assert checkpoints.kept(tmp_path) == "no checkpoint was written yet"
  run = RunCheckpoints(tmp_path, keep=3)
  for step in (2, 10):
    run.save(step, _state(step))
  run.finish()
  assert checkpoints.kept(tmp_path) == (f"the last checkpoint (step 10) is kept in "
                                        f"{tmp_path / 'checkpoints'}")
