"""`train_and_evaluate`: trains per a config in a workdir, resuming from its latest
checkpoint, with dev MAP during training and every collection evaluated at the end.

The loop never waits for the devices between log, evaluation and checkpoint steps: batches
are built ahead in a thread (`prefetch`), metrics stay on the devices, and a non-finite loss
is noted there (the first such step) and checked at those steps, before anything is saved."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from optical_jax import host, host_memory
from optical_jax.config import ConfigError, validate
from optical_jax.distributed import watch_peers
from optical_jax.evaluation.check import check_collections
from optical_jax.evaluation.collections import (CollectionResult, Evaluated, Evaluator,
                                                collection_specs)
from optical_jax.fileio import write_text_atomic
from optical_jax.inputs import unresolved
from optical_jax.layout import CacheDir, Workdir
from optical_jax.models.student import build_models
from optical_jax.training import checkpoints, step as step_lib
from optical_jax.training.input_pipeline import (check_student_language, local_batch, make_batches,
                                                 make_teacher_cache, process_shards,
                                                 token_weights, training_rows)
from optical_jax.training.logging import MetricsLog, plot_curves, start_comparison
from optical_jax.training.prefetch import Prefetcher
from optical_jax.training.throughput import Meter, peak_flops
from optical_jax.training.state import initial_state, make_optimizer
from optical_jax.training.student_init import prepare_student
from optical_jax.training.workdir import StopSignals, check_workdir_config, workdir_lock

log = logging.getLogger("optical_jax")


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what was kept."""


@dataclasses.dataclass
class RunResult:
  """What a finished run returns: its final `params` (the student's, on the first device) at
  `step`, the `models` they belong to, every collection's final evaluation (`collections`,
  by name: values, per-query values, run, and MaxSim's where a collection asks for it), the
  `history` of logged metrics (loss, throughput, dev MAP, ...) by step, and where this
  invocation's time went (`seconds`: set-up, steps, dev evaluation, final evaluation)."""

  step: int
  params: Any
  models: Any  # models.student.DistillationModels
  collections: dict[str, CollectionResult]
  history: list[dict]
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class Stopped(SystemExit):
  """Ctrl-C or SIGTERM stopped the run after saving; its code is 128 + the signal."""


def _check_lengths(config, models) -> None:
  for field in ("data", "eval"):
    limit = config[field].max_length
    for side, encoder in (("teacher", models.teacher), ("student", models.student)):
      if limit > encoder.config.max_length:
        raise ConfigError(f"config.{field}.max_length {limit} is longer than the "
                          f"{encoder.config.max_length} tokens the {side} ({encoder.path}) "
                          "has position embeddings for")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path
                       ) -> RunResult | None:
  """Trains per `config` (its inputs resolved: `optical_jax.inputs.resolve_inputs`) in
  `workdir`, resuming from its latest checkpoint, and evaluates every collection at the end;
  returns the `RunResult` (None when the run halted early, `train.halt_after_steps`)."""
  validate(config, devices=jax.device_count(), backend=jax.devices()[0].platform)
  if (config.runtime.host_memory == "retain" and host_memory.missing_retain()
      and jax.default_backend() == "cpu"):
    log.warning("config.runtime.host_memory 'retain' is not in effect: it must be applied "
                "before JAX's first computation, as train.py does; in a notebook, call "
                "optical_jax.host_memory.configure('retain') first thing")
  missing = unresolved(config)
  if missing:
    raise ConfigError(f"train_and_evaluate takes a config whose inputs are paths; "
                      f"{', '.join(f'config.{f}' for f in missing)} still name references: "
                      "resolve them first (optical_jax.inputs.resolve_inputs, as train.py does)")
  workdir = Path(workdir).expanduser().resolve()  # Orbax needs absolute paths
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir {workdir} is a file; give a directory")
  workdir.mkdir(parents=True, exist_ok=True)
  primary = host.is_primary()
  with workdir_lock(workdir, enabled=primary):
    peers = watch_peers(lambda: _kept(workdir), timeout=float(config.runtime.peer_timeout))
    try:
      return _train(config, workdir, primary)
    except Exception as error:  # a collective or a checkpoint write that a lost peer broke
      peers.failed(error)  # a lost peer ends the process here, in one line
      raise
    finally:
      peers.stop()


def _kept(workdir: Path) -> str:
  """What a run stopped now leaves: its last checkpoint (read from the disk, any thread)."""
  kept = Workdir(workdir).checkpoints
  steps = sorted(int(p.name) for p in kept.glob("*") if p.name.isdigit())
  return (f"the last checkpoint (step {steps[-1]}) is kept in {kept}"
          if steps else "no checkpoint was written yet")


def _watch(first_bad: jax.Array, loss: jax.Array, step: jax.Array) -> jax.Array:
  """The first step whose loss was not finite (0: none yet), kept on the device."""
  return jnp.where((first_bad == 0) & ~jnp.isfinite(loss), step, first_bad).astype(jnp.int32)


# The first non-finite loss's step, watched on the device between log steps (the train loop
# and benchmarks/accelerator.py call it after each step).
watch_loss = jax.jit(_watch, donate_argnums=(0,))


def _fetch(tree):
  """A replicated tree read to the host (numpy), through `jax.device_get`: the loop's one way
  of reading the devices, at log, evaluation and checkpoint steps only."""
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x.addressable_data(0))),
                                tree)


def _batch_counts(batch) -> tuple[int, int]:
  """(real tokens of every text column, examples) of this process's batch, times the
  processes: what the whole step encodes (host masks, no device read)."""
  masks = [v for k, v in batch.items() if k.endswith("_mask")]
  processes = jax.process_count()
  return (int(sum(int(m.sum()) for m in masks)) * processes,
          int(masks[0].shape[0]) * processes)


def _train(config, workdir: Path, primary: bool) -> RunResult | None:
  began, seconds = time.perf_counter(), {"dev evaluation": 0.0}
  paths = Workdir(workdir)
  check_workdir_config(workdir, config)  # before any slow work
  specs = collection_specs(config)
  rows = training_rows(config)  # read and checked: a bad training file fails first
  # Every collection's files checked (a malformed line, judged documents missing from the
  # corpus) before the models load and the training data is tokenised, not at the end.
  check_collections(specs, config.runtime.cache_dir)
  if primary:
    check_student_language(config, rows)
  config = prepare_student(config, workdir, primary=primary)
  dev_spec = next((s for s in specs if s.name == config.eval.dev_collection), None)
  models = build_models(config)
  _check_lengths(config, models)
  if primary:  # before the training data is tokenised and the teacher cache made
    checkpoints.check_writable(paths.checkpoints)
  mesh = step_lib.data_mesh()
  batches = make_batches(config, models, rows, CacheDir(config.runtime.cache_dir).tokens,
                         shards=process_shards(mesh, config.train.batch_size))
  del rows
  log.info("%d training examples, %d steps per epoch, %d device(s) in %d process(es), padded "
           "lengths %s", batches.num_examples, batches.steps_per_epoch, jax.device_count(),
           jax.process_count(), batches.shapes)
  teacher_cache = make_teacher_cache(config, models, batches, backend=jax.default_backend())
  weights = token_weights(config, models, batches)
  optimizer = make_optimizer(config)
  state = initial_state(models, optimizer, trainable=config.train.trainable, seed=config.seed)
  latest, best = checkpoints.managers(workdir, config.train.keep_checkpoints)
  state, start = checkpoints.restore_latest(latest, state, primary=primary)
  state, start = step_lib.replicate(state, mesh), start or 0
  if start and primary:
    print(f"resumed from step {start} ({paths.checkpoints})", flush=True)
  if primary:
    write_text_atomic(paths.config, config.to_json_best_effort(indent=2) + "\n")
  metrics_log = MetricsLog(workdir, start, enabled=primary)
  teacher_params = step_lib.replicate(models.teacher.params, mesh)
  step_fn = step_lib.compiled_per_shape(step_lib.make_train_step(config, models, optimizer, mesh),
                                        step_lib.step_compiler_options(config))
  rng = step_lib.replicate(jax.random.PRNGKey(config.seed), mesh)
  first_bad = step_lib.replicate(np.zeros((), np.int32), mesh)
  on_device0 = lambda params: jax.tree_util.tree_map(lambda x: x.addressable_data(0), params)
  evaluator = Evaluator(models, config, mesh=mesh)
  num_steps, t = config.train.num_train_steps, config.train
  final_dev = {}  # the last step's dev evaluation, reused by the final evaluation
  device = jax.devices()[0]
  meter = Meter(peak=peak_flops(device.device_kind, config.model.dtype))

  def dev_eval(step: int) -> float | None:
    started = time.perf_counter()
    try:
      return _dev_eval(step)
    finally:
      seconds["dev evaluation"] += time.perf_counter() - started

  def _dev_eval(step: int) -> float | None:
    if dev_spec is None:
      return None
    # The student's embeddings are cached at the final step only (eval.py of that checkpoint
    # reuses them); earlier steps' would never be read again.
    result = evaluator.evaluate(dev_spec, on_device0(state.params), cache=step == num_steps)
    metrics_log.write(step, {f"dev_{k}": v for k, v in result.values.items()})
    if step == num_steps:
      final_dev[dev_spec.name] = result
    return result.values["MAP"]

  def build(step: int):  # in the prefetch thread: host batch, teacher vectors, to the devices
    batch = local_batch(batches, teacher_cache, step, weights)
    return step_lib.global_batch(batch, mesh), _batch_counts(batch)

  if start == 0 and config.eval.eval_at_start:
    dev_eval(0)
  best_map = checkpoints.best_value(best, "dev_MAP")
  checked = start  # every step up to here had a finite loss
  bar = tqdm(range(start, num_steps), initial=start, total=num_steps,
             desc=f"{config.stage}:{config.loss}",
             disable=not (config.runtime.progress_bar and primary))
  prefetcher = Prefetcher(build, start, num_steps, depth=config.data.prefetch)
  seconds["set-up"] = time.perf_counter() - began - seconds["dev evaluation"]
  loop_began, dev_before = time.perf_counter(), seconds["dev evaluation"]
  meter.reset()
  with StopSignals() as stop, prefetcher:
    for step in bar:
      done = step + 1
      log_now = done % t.log_every_steps == 0 or done == num_steps
      eval_now = done % t.eval_every_steps == 0 or done == num_steps
      save_now = done % t.checkpoint_every_steps == 0 or done == num_steps
      halt_now = bool(t.halt_after_steps) and done - start >= t.halt_after_steps
      batch, (tokens, examples) = prefetcher.get(step)
      # Between log, evaluation and checkpoint steps nothing is read back from the devices:
      # the host dispatches step after step while the prefetch thread builds the next batch.
      with jax.transfer_guard_device_to_host("disallow"):
        state, metrics = step_fn(state, teacher_params, batch, rng)
        first_bad = watch_loss(first_bad, metrics["loss"], state.step)
      meter.add(tokens=tokens, examples=examples,
                flops=step_fn.flops_for(state, teacher_params, batch, rng))
      if not (log_now or eval_now or save_now or halt_now or stop.requested):
        continue
      checkpoints.check(latest, best)  # a failed background save stops the run here
      bad = int(_fetch(first_bad))
      if bad:
        checkpoints.finish(latest, best)  # the last finite checkpoint on disk, not in flight
        raise TrainingError(
            f"non-finite loss at step {bad} (steps {checked + 1}-{done} ran since the last "
            f"check); the last finite checkpoint (step {latest.latest_step()}) is kept in "
            f"{paths.checkpoints}. Lower config.train.learning_rate or raise "
            "config.ot.epsilon.")
      checked = done
      if log_now:
        record = {k: float(v) for k, v in _fetch(metrics).items()}
        record.update(meter.rates())
        record["compilations"] = len(step_fn.executables)
        metrics_log.write(done, record)
        postfix = dict(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_sec']:.0f}")
        if "mfu" in record:
          postfix["mfu"] = f"{record['mfu']:.1%}"
        bar.set_postfix(**postfix)
      dev_map = None
      if eval_now:
        dev_map = dev_eval(done)
        if dev_map is not None and primary:
          bar.write(f"step {done}: dev MAP {dev_map:.4f}")
      if save_now or stop.requested:  # halting keeps the regular ones, as a killed run would
        checkpoints.save(latest, done, state)
      if dev_map is not None and dev_map > best_map:  # parameters only: best/ is for evaluation
        # The best counts once its checkpoint is on disk: a failed save records nothing.
        checkpoints.save(best, done, {"params": state.params}, metrics={"dev_MAP": dev_map},
                         wait=True)
        best_map = dev_map
      if stop.requested or halt_now:
        bar.close()
        checkpoints.finish(latest, best)
        if stop.requested:
          print(f"stopped at step {done}; rerun the same command to resume", flush=True)
          raise Stopped(stop.exit_code)
        if primary:
          print(f"halted after step {done} (halt_after_steps); rerun to resume", flush=True)
        return None
      meter.reset()  # evaluation and saving are not training time
  bar.close()
  checkpoints.finish(latest, best)
  log.info("compiled the train step for %d shape(s)", len(step_fn.executables))
  if teacher_cache is not None:
    log.info("teacher token cache %s: encoded %d pairs, the rest were cached",
             teacher_cache.directory, teacher_cache.encoded)
  # The training data is not needed by evaluation (`build`'s closure holds it too).
  batches = teacher_cache = weights = prefetcher = None
  if primary:
    plot_curves(metrics_log.records(), paths.curves,
                title=f"{config.stage} / {config.loss}")
  metrics_log.close()
  params = on_device0(state.params)
  # Saving checkpoints counts as steps: the loop waits for the last one.
  seconds["steps"] = (time.perf_counter() - loop_began
                      - (seconds["dev evaluation"] - dev_before))
  final_began = time.perf_counter()
  final = Evaluated(num_steps, "final", str(paths.checkpoints / str(num_steps)))
  collections = evaluator.evaluate_all(specs, params, workdir, final, evaluated=final_dev,
                                       write=primary,
                                       progress=bool(config.runtime.progress_bar and primary))
  seconds["final evaluation"] = time.perf_counter() - final_began
  history = metrics_log.records()
  summary = start_comparison(history, paths.best)
  if summary and primary:
    print(summary, flush=True)
  return RunResult(step=num_steps, params=params, models=models, collections=collections,
                   history=history, seconds=seconds)
