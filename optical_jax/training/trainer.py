"""The trainer: what a run steps with (the replicated state and teacher parameters, the rng,
the step compiled once per batch shape) and the non-finite watch, built once for the train
loop and the benchmarks alike.

A step never reads the devices: it runs under `jax.transfer_guard_device_to_host("disallow")`
and notes the first step whose loss was not finite on the device; the loop reads that (and
the metrics) only at its log, evaluation and checkpoint steps."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from optical_jax.runtime import host
from optical_jax.training import step as step_lib
from optical_jax.training.state import TrainState, initial_state, make_optimizer


def _watch(first_bad: jax.Array, loss: jax.Array, step: jax.Array) -> jax.Array:
  """The first step whose loss was not finite (0: none yet), kept on the device."""
  return jnp.where((first_bad == 0) & ~jnp.isfinite(loss), step, first_bad).astype(jnp.int32)


watch_loss = jax.jit(_watch, donate_argnums=(0,))


@dataclasses.dataclass
class Trainer:
  """A run's training side on `mesh`: `state` (replicated) at step `start` when built,
  `step_fn` (`step.compiled_per_shape`: `(state, teacher_params, batch, rng) -> (state,
  metrics)`), the replicated `teacher_params` and `rng`, and `first_bad`, the first step
  whose loss was not finite (0: none), on the device. `checked`: the last step whose loss
  was read back as finite."""

  mesh: Mesh
  state: TrainState
  start: int
  step_fn: Callable
  teacher_params: Any
  rng: jax.Array
  first_bad: jax.Array
  checked: int = 0

  def apply(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The compiled step alone on a global `batch`: the state advances, the metrics stay on
    the devices."""
    self.state, metrics = self.step_fn(self.state, self.teacher_params, batch, self.rng)
    return metrics

  def step(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The loop's step: `apply` and the non-finite watch, with no read from the devices (an
    implicit one is an error on accelerators)."""
    with jax.transfer_guard_device_to_host("disallow"):
      metrics = self.apply(batch)
      self.first_bad = watch_loss(self.first_bad, metrics["loss"], self.state.step)
    return metrics

  def non_finite(self, step: int) -> int | None:
    """The first step up to `step` whose loss was not finite (one read of the devices), or
    None, after which every step up to `step` counts as `checked`."""
    bad = int(host.to_host(self.first_bad))
    if bad:
      return bad
    self.checked = step
    return None

  def params(self):
    """The student's parameters on the first device (no host copy): what evaluation reads."""
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0), self.state.params)

  def executable_for(self, batch):
    """The compiled executable a step on `batch` runs (its memory and cost analyses)."""
    return self.step_fn.executable_for(self.state, self.teacher_params, batch, self.rng)

  def flops_for(self, batch) -> float | None:
    """FLOPs one device runs in a step on `batch` (XLA's cost analysis; None where none)."""
    return self.step_fn.flops_for(self.state, self.teacher_params, batch, self.rng)

  @property
  def compilations(self) -> int:
    """How many batch shapes the step was compiled for."""
    return len(self.step_fn.executables)


def build_trainer(config, models, mesh: Mesh, *, checkpoints=None, primary: bool = True,
                  compiler_options: Mapping[str, str] | None = None) -> Trainer:
  """The `Trainer` of `config` for `models` on `mesh`: step 0's state (`config.seed`, the
  optimizer state of `config.train.trainable` only), or the latest readable checkpoint's where
  `checkpoints` (a `RunCheckpoints`) holds one (`primary`: the process that moves a damaged
  one aside). The step compiles on first use with XLA `compiler_options` (default:
  `step.step_compiler_options(config)`)."""
  optimizer = make_optimizer(config)
  state = initial_state(models, optimizer, trainable=config.train.trainable, seed=config.seed)
  start = 0
  if checkpoints is not None:
    state, start = checkpoints.restore(state, primary=primary)
  options = (step_lib.step_compiler_options(config) if compiler_options is None
             else compiler_options)
  step_fn = step_lib.compiled_per_shape(
      step_lib.make_train_step(config, models, optimizer, mesh), options)
  replicate = lambda tree: step_lib.replicate(tree, mesh)
  return Trainer(mesh=mesh, state=replicate(state), start=start, step_fn=step_fn,
                 teacher_params=replicate(models.teacher.params),
                 rng=replicate(jax.random.PRNGKey(config.seed)),
                 first_bad=replicate(np.zeros((), np.int32)), checked=start)
