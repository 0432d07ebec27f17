"""The data-parallel step: compiled once per shape with the CPU schedule, microbatches, and
XLA options this XLA rejects."""

import jax
import numpy as np
import pytest

from optical_jax.config import CPU_SCHEDULES, base_config
from optical_jax.models.student import build_models
from optical_jax.training.state import initial_state, make_optimizer
from optical_jax.runtime.mesh import data_mesh
from optical_jax.training.step import (compiled_per_shape, global_batch,
                                       make_train_step, replicate, step_compiler_options)


def _setup(tiny_bert_dir, **fields):
  config = base_config()
  config.model.teacher, config.model.dropout = str(tiny_bert_dir), 0.0
  for field, value in fields.items():
    section, name = field.split(".")
    config[section][name] = value
  models, optimizer, mesh = build_models(config), make_optimizer(config), data_mesh()
  return config, models, optimizer, mesh


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the schedule is an XLA:CPU option")
def test_cpu_train_step_compiles_once_per_shape_with_the_memory_schedule(tiny_bert_dir):
  config, models, optimizer, mesh = _setup(tiny_bert_dir)
  assert step_compiler_options(config) == CPU_SCHEDULES["memory"]  # the default, on CPU
  teacher_params = replicate(models.teacher.params, mesh)
  rng = replicate(jax.random.PRNGKey(0), mesh)

  def batch(length):
    # Large enough for activations, not the embedding gradient, to decide the memory.
    ids = np.random.default_rng(length).integers(1000, 20000, (32, length)).astype(np.int32)
    return global_batch({"student_ids": ids, "student_mask": np.ones_like(ids),
                         "teacher_ids": ids, "teacher_mask": np.ones_like(ids)}, mesh)

  steps, losses = {}, {}
  for schedule, options in CPU_SCHEDULES.items():
    steps[schedule] = compiled_per_shape(make_train_step(config, models, optimizer, mesh),
                                         options)
    state = replicate(initial_state(models, optimizer), mesh)
    for length in (64, 96, 64):
      state, metrics = steps[schedule](state, teacher_params, batch(length), rng)
    losses[schedule] = float(metrics["loss"])
    assert len(steps[schedule].executables) == 2
  temporary = {schedule: [e.memory_analysis().temp_size_in_bytes
                          for e in step.executables.values()] for schedule, step in steps.items()}
  assert all(m < d for m, d in zip(temporary["memory"], temporary["default"])), temporary
  assert losses["memory"] == pytest.approx(losses["default"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ot", "mse"])
def test_microbatched_step_trains_as_the_whole_batch_does_in_less_memory(loss, tiny_bert_dir):
  config, models, optimizer, mesh = _setup(tiny_bert_dir)
  config.loss = loss
  teacher_params = replicate(models.teacher.params, mesh)
  rng = replicate(jax.random.PRNGKey(0), mesh)
  data = np.random.default_rng(0)
  ids = data.integers(1000, 20000, (16, 64)).astype(np.int32)
  mask = (np.arange(64) < data.integers(4, 65, (16, 1))).astype(np.int32)  # padded rows
  arrays = {"student_ids": ids, "student_mask": mask, "teacher_ids": ids[..., ::-1].copy(),
            "teacher_mask": mask[..., ::-1].copy()}
  results = {}
  for size in (0, 2):
    config.train.microbatch_size = size
    step = compiled_per_shape(make_train_step(config, models, optimizer, mesh), {})
    state = replicate(initial_state(models, optimizer), mesh)
    for _ in range(2):
      batch = global_batch(arrays, mesh)
      state, metrics = step(state, teacher_params, batch, rng)
    executable = step.executable_for(state, teacher_params, global_batch(arrays, mesh), rng)
    results[size] = (jax.device_get(state.params), jax.device_get(metrics),
                     executable.memory_analysis().temp_size_in_bytes)
  (whole, whole_metrics, whole_bytes), (split, split_metrics, split_bytes) = results.values()
  for name in whole_metrics:
    np.testing.assert_allclose(split_metrics[name], whole_metrics[name], rtol=1e-5, atol=1e-7)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         split, whole)
  assert split_bytes < whole_bytes, (split_bytes, whole_bytes)  # the chunks ran one by one


def test_compiler_options_this_xla_rejects_fall_back_with_a_warning(caplog):
  double = jax.jit(lambda state, teacher_params, batch, rng: 2 * batch["x"])
  step = compiled_per_shape(double, {"xla_cpu_scheduler_type": "NO_SUCH_SCHEDULE"})
  with caplog.at_level("WARNING", logger="optical_jax"):
    out = step(None, None, {"x": np.ones((1, 3), np.float32)}, None)
  np.testing.assert_array_equal(out, 2 * np.ones((1, 3)))
  assert "NO_SUCH_SCHEDULE" in caplog.text and "compiling without them" in caplog.text


def test_the_package_has_no_pmap():
  from tests.helpers import ROOT
  offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "optical_jax").rglob("*.py")
               if "jax.pmap" in p.read_text() or "device_put_replicated" in p.read_text()]
  assert not offenders


@pytest.mark.slow
def test_token_weights_in_the_batch_are_the_ot_marginals(tiny_bert_dir):
  from optical_jax.losses import ot_distillation_loss
  config, models, optimizer, mesh = _setup(tiny_bert_dir)
  config.loss = "ot"
  config.ot.marginals = "idf"
  teacher_params = replicate(models.teacher.params, mesh)
  rng = replicate(jax.random.PRNGKey(0), mesh)
  data = np.random.default_rng(0)
  ids = data.integers(1000, 20000, (8, 16)).astype(np.int32)
  mask = (np.arange(16) < data.integers(4, 17, (8, 1))).astype(np.int32)
  weights = data.uniform(0.1, 3.0, (8, 16)).astype(np.float32) * mask
  arrays = {"student_ids": ids, "student_mask": mask, "teacher_ids": ids[:, ::-1].copy(),
            "teacher_mask": mask[:, ::-1].copy()}
  params = initial_state(models, optimizer).params

  def loss_of(arrays):
    step = compiled_per_shape(make_train_step(config, models, optimizer, mesh), {})
    state = replicate(initial_state(models, optimizer), mesh)
    return float(step(state, teacher_params, global_batch(arrays, mesh), rng)[1]["loss_ot"])

  def reference(student_weights=None, teacher_weights=None):
    s = models.student_tokens(params, ids, mask, deterministic=True)
    t = models.teacher.apply(models.teacher.params, arrays["teacher_ids"], arrays["teacher_mask"])
    o = config.ot
    return float(np.mean(ot_distillation_loss(
        s, t, mask.astype(bool), arrays["teacher_mask"].astype(bool),
        student_weights=student_weights, teacher_weights=teacher_weights, epsilon=o.epsilon,
        max_iterations=o.max_iterations, threshold=o.threshold, center=o.center)))

  weighted = loss_of({**arrays, "student_weights": weights,
                      "teacher_weights": weights[:, ::-1].copy()})
  assert weighted == pytest.approx(reference(weights, weights[:, ::-1].copy()), rel=1e-4)
  assert loss_of(arrays) == pytest.approx(reference(), rel=1e-4)
  assert abs(weighted - reference()) > 1e-3  # the weights moved the plan



_IMPLICIT_VS_UNROLL = """
import json, sys
import jax, numpy as np
from optical_jax.config import base_config
from optical_jax.models.student import build_models
from optical_jax.training.state import initial_state, make_optimizer
from optical_jax.runtime.mesh import data_mesh
from optical_jax.training.step import global_batch, make_train_step, replicate
config = base_config()
config.model.teacher, config.model.dropout, config.loss = sys.argv[1], 0.0, "ot"
config.ot.epsilon, config.ot.max_iterations = 0.1, 500
models = build_models(config)
rng = np.random.default_rng(0)
ids = rng.integers(1000, 20000, (4, 12)).astype(np.int32)
mask = (np.arange(12) < rng.integers(4, 13, (4, 1))).astype(np.int32)
arrays = {"student_ids": ids, "student_mask": mask, "teacher_ids": ids[:, ::-1].copy(),
          "teacher_mask": mask[:, ::-1].copy()}
out = {}
for devices in (1, 2):
  mesh = data_mesh(jax.devices()[:devices])
  for mode in ("unroll", "implicit"):
    config.ot.gradient = mode
    optimizer = make_optimizer(config)
    step = make_train_step(config, models, optimizer, mesh)
    _, metrics = step(replicate(initial_state(models, optimizer), mesh),
                      replicate(models.teacher.params, mesh), global_batch(arrays, mesh),
                      replicate(jax.random.PRNGKey(0), mesh))
    out[f"{devices} {mode}"] = {k: float(v) for k, v in metrics.items()}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_implicit_ot_gradient_in_the_sharded_step_equals_unroll_on_1_and_2_devices(
    tiny_bert_dir):
  """`ot.gradient` "implicit" inside the step (its linear solve traced in `shard_map`) gives
  the gradient "unroll" gives, on one and on two devices."""
  import json
  import os
  import subprocess
  import sys
  result = subprocess.run(
      [sys.executable, "-c", _IMPLICIT_VS_UNROLL, str(tiny_bert_dir)], capture_output=True,
      text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                       XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout.splitlines()[-1])
  for devices in (1, 2):
    unroll, implicit = metrics[f"{devices} unroll"], metrics[f"{devices} implicit"]
    assert implicit["loss"] == pytest.approx(unroll["loss"], rel=1e-6)
    assert implicit["grad_norm"] == pytest.approx(unroll["grad_norm"], rel=1e-4)
    assert implicit["grad_norm"] > 0
