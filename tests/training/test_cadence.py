"""When a run logs, evaluates, saves and halts (`Cadence`), and where its time goes
(`PhaseTimer`)."""

import ml_collections
import pytest

from optical_jax.training.cadence import Cadence, Due
from optical_jax.training.phases import PhaseTimer


def _train(**fields):
  train = dict(num_train_steps=10, log_every_steps=2, eval_every_steps=5,
               checkpoint_every_steps=4, halt_after_steps=0)
  return ml_collections.ConfigDict({**train, **fields})


def _steps(cadence: Cadence, what: str) -> list[int]:
  return [step for step in range(1, cadence.num_steps + 1) if getattr(cadence.due(step), what)]


def test_each_action_is_due_at_its_interval_and_all_at_the_last_step():
  cadence = Cadence(_train(), start=0)
  assert _steps(cadence, "log") == [2, 4, 6, 8, 10]
  assert _steps(cadence, "eval") == [5, 10]
  assert _steps(cadence, "save") == [4, 8, 10]
  assert _steps(cadence, "halt") == []
  assert cadence.due(10) == Due(log=True, eval=True, save=True)
  assert not cadence.due(1) and cadence.due(2)  # nothing due is false


def test_the_last_step_is_due_off_the_intervals():
  cadence = Cadence(_train(num_train_steps=7, log_every_steps=3), start=0)
  assert _steps(cadence, "log") == [3, 6, 7]
  assert _steps(cadence, "save") == [4, 7]


@pytest.mark.parametrize("start, halts", [(0, [3, 4, 5, 6, 7, 8, 9, 10]), (4, [7, 8, 9, 10])])
def test_halt_counts_the_steps_this_invocation_ran(start, halts):
  cadence = Cadence(_train(halt_after_steps=3), start=start)
  assert [s for s in range(start + 1, 11) if cadence.due(s).halt] == halts


def test_a_resumed_run_keeps_the_intervals_of_a_straight_one():
  straight, resumed = Cadence(_train(), start=0), Cadence(_train(), start=4)
  for step in range(5, 11):
    assert straight.due(step) == resumed.due(step)


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_the_phase_timer_adds_up_each_phase_and_leaves_nested_ones_out():
  clock = _Clock()
  timer = PhaseTimer(("set-up", "steps", "dev evaluation", "final evaluation"), clock=clock)
  assert timer.seconds == {"set-up": 0.0, "steps": 0.0, "dev evaluation": 0.0,
                           "final evaluation": 0.0}
  with timer("set-up"):
    clock.now += 2
    with timer("dev evaluation"):
      clock.now += 1
    clock.now += 3
  with timer("steps"):
    clock.now += 10
    for _ in range(2):
      with timer("dev evaluation"):
        clock.now += 4
    clock.now += 5
  with timer("compilation"):  # a phase not named up front
    clock.now += 0.5
  assert timer.seconds == {"set-up": 5.0, "steps": 15.0, "dev evaluation": 9.0,
                           "final evaluation": 0.0, "compilation": 0.5}


def test_a_phase_that_raises_is_still_counted():
  clock = _Clock()
  timer = PhaseTimer(clock=clock)
  with pytest.raises(ValueError):
    with timer("steps"):
      clock.now += 3
      raise ValueError
  assert timer.seconds == {"steps": 3.0}
