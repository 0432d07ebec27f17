"""The data-parallel train step: one per-device function with named-axis collectives, run by
`jax.shard_map` over a `Mesh` of every device of every process (axis `data`) under
`jax.jit`, the state donated, compiled once per batch shape with the XLA options we choose.

Parameters and optimizer state are replicated (`NamedSharding(mesh, P())`); the batch is split
along its first axis (`P("data")`), each process supplying its own rows. Gradients are averaged
with `lax.pmean`, as pmap's users wrote it: a "pmap-parallel" step on
today's JAX.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optical_jax.config import CPU_SCHEDULES, microbatches_per_device
from optical_jax.models.student import DistillationModels
from optical_jax.pooling import pool
from optical_jax.runtime.mesh import AXIS
from optical_jax.training.objectives import distillation_loss, teacher_stage_loss
from optical_jax.training.state import TrainState, merge_trainable, trainable_subtree
from optical_jax.training.throughput import executable_flops

log = logging.getLogger("optical_jax")


def replicate(tree, mesh: Mesh):
  """`tree` (host or device arrays, the same on every process) replicated on every device."""
  sharding = NamedSharding(mesh, P())
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """The global batch of which `local_batch` holds this process's rows (process p holds rows
  `[p * n, (p + 1) * n)`), split over the mesh's devices along its first axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  processes = jax.process_count()
  return {k: jax.make_array_from_process_local_data(
      sharding, v, (v.shape[0] * processes, *v.shape[1:])) for k, v in local_batch.items()}


def train_step(state: TrainState, teacher_params, batch: Mapping[str, jax.Array],
               rng: jax.Array, *, config, models: DistillationModels,
               optimizer: optax.GradientTransformation):
  """One optimizer step on this device's share of the batch: `(state, metrics)`.

  Runs per device inside `shard_map`: `batch` arrays are this device's rows; gradients and
  metrics are averaged over all devices (`lax.pmean` over `AXIS`).
  """
  deterministic = not config.model.dropout
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))

  def loss_fn(trainable, batch, rng):
    rngs = None if deterministic else {"dropout": rng}
    params = merge_trainable(state.params, trainable)
    tokens = lambda name: models.student_tokens(params, batch[f"{name}_ids"],
                                                batch[f"{name}_mask"],
                                                deterministic=deterministic, rngs=rngs)
    if config.stage == "teacher":
      encode = lambda name: pool(tokens(name), batch[f"{name}_mask"],
                                 method=models.student.pooling, normalize=True)
      per_example, aux = teacher_stage_loss(config, encode, batch)
    else:
      if "teacher_tokens" in batch:  # from the TeacherTokenCache
        teacher_tokens = batch["teacher_tokens"]
      else:
        teacher_tokens = jax.lax.stop_gradient(models.teacher.apply(
            teacher_params, batch["teacher_ids"], batch["teacher_mask"]))
      per_example, aux = distillation_loss(
          config, models,
          {"tokens": tokens("student"), "ids": batch["student_ids"],
           "mask": batch["student_mask"], "weights": batch.get("student_weights")},
          {"tokens": teacher_tokens, "ids": batch["teacher_ids"], "mask": batch["teacher_mask"],
           "weights": batch.get("teacher_weights")})
    return jnp.mean(per_example), aux

  # Gradients of the trainable parameters only: frozen ones are constants here, so XLA
  # drops their weight-gradient matmuls instead of computing and discarding them.
  trainable = trainable_subtree(state.params, config.train.trainable)
  gradient = jax.value_and_grad(loss_fn, has_aux=True)
  chunks = microbatches_per_device(config, jax.tree_util.tree_leaves(batch)[0].shape[0])
  if chunks == 1:
    (loss, aux), grads = gradient(trainable, batch, rng)
  else:
    # Equal chunks, so the mean of their mean losses (and gradients) is the batch's.
    split = jax.tree_util.tree_map(lambda x: x.reshape(chunks, -1, *x.shape[1:]), batch)

    def accumulate(total, chunk):
      index, micro_batch = chunk
      return jax.tree_util.tree_map(
          jnp.add, total, gradient(trainable, micro_batch, jax.random.fold_in(rng, index))), None

    first = jax.tree_util.tree_map(lambda x: x[0], split)
    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(gradient, trainable, first, rng))
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(chunks), split))
    (loss, aux), grads = jax.tree_util.tree_map(lambda x: x / chunks, total)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
  params = merge_trainable(state.params, optax.apply_updates(trainable, updates))
  metrics = jax.lax.pmean({"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}, AXIS)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(config, models: DistillationModels, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> Callable:
  """`train_step` over `mesh`: `(state, teacher_params, batch, rng) -> (state, metrics)`,
  jitted with the state donated; state, teacher parameters and rng replicated, batch split
  over `AXIS`, metrics replicated."""
  per_device = functools.partial(train_step, config=config, models=models, optimizer=optimizer)
  # check_vma=False: gradients stay per device until the explicit pmean, as under pmap.
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=(0,))


def step_compiler_options(config) -> dict[str, str]:
  """The XLA options the train step compiles with: `config.runtime.xla_cpu_schedule` on CPU."""
  if jax.default_backend() != "cpu":
    return {}
  return CPU_SCHEDULES[config.runtime.xla_cpu_schedule]


def compiled_per_shape(step_fn, compiler_options: Mapping[str, str]):
  """`step_fn(state, teacher_params, batch, rng)`, a jitted function, compiled ahead of time
  once per batch shape with XLA `compiler_options`. An XLA that does not know an option gets
  a warning and compiles without the options. The result's `.executable_for(...)` (same
  arguments) gives the executable a call would use; `.executables` maps batch shapes to them
  (for `memory_analysis()`); `.flops_for(...)` (same arguments) the FLOPs one device runs
  per call, from XLA's cost analysis (None where it gives none)."""
  executables, flops = {}, {}

  def executable_for(state, teacher_params, batch, rng):
    nonlocal compiler_options
    key = tuple(sorted((name, np.shape(array)) for name, array in batch.items()))
    if key not in executables:
      lowered = step_fn.lower(state, teacher_params, batch, rng)
      try:
        executables[key] = lowered.compile(dict(compiler_options))
      except Exception as e:  # XLA reports an unknown option as its own error type
        if not compiler_options:
          raise
        log.warning("this XLA rejects the train step's compiler options %s (%s); compiling "
                    "without them", dict(compiler_options), e)
        compiler_options = {}
        executables[key] = lowered.compile()
    return executables[key]

  def call(state, teacher_params, batch, rng):
    return executable_for(state, teacher_params, batch, rng)(state, teacher_params, batch, rng)

  def flops_for(state, teacher_params, batch, rng):
    executable = executable_for(state, teacher_params, batch, rng)
    if id(executable) not in flops:
      flops[id(executable)] = executable_flops(executable)
    return flops[id(executable)]

  call.executable_for = executable_for
  call.executables = executables
  call.flops_for = flops_for
  return call

