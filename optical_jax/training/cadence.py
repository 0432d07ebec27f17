"""When a run logs, evaluates, saves and halts: `Cadence(config.train, start).due(step)`, as
big_vision's `itstime` says it, with every action due at the last step."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Due:
  """What is due once a step is done: log the metrics, evaluate on dev, save a checkpoint,
  halt (`train.halt_after_steps`). True when any is."""

  log: bool = False
  eval: bool = False
  save: bool = False
  halt: bool = False

  def __bool__(self) -> bool:
    return self.log or self.eval or self.save or self.halt


class Cadence:
  """The schedule of `config.train` (`log_every_steps`, `eval_every_steps`,
  `checkpoint_every_steps`, `num_train_steps`, `halt_after_steps`) for a run that starts, or
  resumes, at step `start`."""

  def __init__(self, train, start: int):
    self.num_steps, self.start = int(train.num_train_steps), int(start)
    self.log_every, self.eval_every = int(train.log_every_steps), int(train.eval_every_steps)
    self.save_every, self.halt_after = (int(train.checkpoint_every_steps),
                                        int(train.halt_after_steps or 0))

  def due(self, step: int) -> Due:
    """What is due once `step` steps are done (1 after the first step)."""
    last = step == self.num_steps
    return Due(log=last or step % self.log_every == 0,
               eval=last or step % self.eval_every == 0,
               save=last or step % self.save_every == 0,
               halt=bool(self.halt_after) and step - self.start >= self.halt_after)
