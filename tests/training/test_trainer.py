"""The trainer's non-finite watch: the first non-finite step kept on the device, read back
only when the loop checks."""

import jax.numpy as jnp
import numpy as np

from optical_jax.training.trainer import Trainer, watch_loss


def test_the_watch_keeps_the_first_non_finite_step():
  first = jnp.zeros((), jnp.int32)
  for step, loss in ((1, 0.5), (2, np.nan), (3, np.inf), (4, 0.1)):
    first = watch_loss(first, jnp.float32(loss), jnp.int32(step))
  assert int(first) == 2


def test_a_check_moves_the_checked_step_only_while_every_loss_was_finite():
  trainer = Trainer(mesh=None, state=None, start=4, step_fn=None, teacher_params=None,
                    rng=None, first_bad=jnp.zeros((), jnp.int32), checked=4)
  assert trainer.non_finite(6) is None and trainer.checked == 6
  trainer.first_bad = jnp.int32(8)
  assert trainer.non_finite(10) == 8 and trainer.checked == 6  # the window 7-10 is named
