"""`train_and_evaluate`: trains per a config in a workdir, resuming from its latest
checkpoint, with dev MAP during training and every collection evaluated at the end.

The loop never waits for the devices between log, evaluation and checkpoint steps: batches
are built ahead in a thread (`prefetch`), metrics stay on the devices, and a non-finite loss
is noted there (the first such step, `trainer`) and checked at those steps, before anything
is saved. What is due at a step is the `Cadence`'s; where the time went, the `PhaseTimer`'s."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
from tqdm.auto import tqdm

from optical_jax.config import ConfigError, validate
from optical_jax.data.inputs import unresolved
from optical_jax.evaluation.collections import CollectionResult, Evaluated, Evaluator
from optical_jax.files.fileio import write_text_atomic
from optical_jax.files.layout import Workdir
from optical_jax.runtime import host, host_memory
from optical_jax.runtime.distributed import watch_peers
from optical_jax.runtime.lock import workdir_lock
from optical_jax.runtime.stopping import StopSignals
from optical_jax.training.cadence import Cadence
from optical_jax.training.checkpoints import RunCheckpoints, kept
from optical_jax.training.logging import MetricsLog, plot_curves, start_comparison
from optical_jax.training.phases import PhaseTimer
from optical_jax.training.prefetch import Prefetcher
from optical_jax.training.prepare import prepare_run
from optical_jax.training.throughput import Meter, peak_flops
from optical_jax.training.trainer import Trainer, build_trainer

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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path
                       ) -> RunResult | None:
  """Trains per `config` (its inputs resolved: `optical_jax.data.inputs.resolve_inputs`) in
  `workdir`, resuming from its latest checkpoint, and evaluates every collection at the end;
  returns the `RunResult` (None when the run halted early, `train.halt_after_steps`)."""
  validate(config, devices=jax.device_count(), backend=jax.devices()[0].platform)
  if (config.runtime.host_memory == "retain" and host_memory.missing_retain()
      and jax.default_backend() == "cpu"):
    log.warning("config.runtime.host_memory 'retain' is not in effect: it must be applied "
                "before JAX's first computation, as train.py does; in a notebook, call "
                "optical_jax.runtime.host_memory.configure('retain') first thing")
  missing = unresolved(config)
  if missing:
    raise ConfigError(f"train_and_evaluate takes a config whose inputs are paths; "
                      f"{', '.join(f'config.{f}' for f in missing)} still name references: "
                      "resolve them first (optical_jax.data.inputs.resolve_inputs, as train.py does)")
  workdir = Path(workdir).expanduser().resolve()  # Orbax needs absolute paths
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir {workdir} is a file; give a directory")
  workdir.mkdir(parents=True, exist_ok=True)
  primary = host.is_primary()
  with workdir_lock(workdir, enabled=primary):
    peers = watch_peers(lambda: kept(workdir), timeout=float(config.runtime.peer_timeout))
    try:
      return _train(config, workdir, primary)
    except Exception as error:  # a collective or a checkpoint write that a lost peer broke
      peers.failed(error)  # a lost peer ends the process here, in one line
      raise
    finally:
      peers.stop()


# Where a run's time goes (`RunResult.seconds`).
PHASES = ("set-up", "steps", "dev evaluation", "final evaluation")


class _DevEvaluation:
  """Dev MAP at a step (None without a dev collection), timed as "dev evaluation" and written
  to the metrics log; the last step's result is kept (`final`, by collection name) for the
  final evaluation to reuse."""

  def __init__(self, evaluator: Evaluator, spec, metrics_log: MetricsLog, num_steps: int,
               timer: PhaseTimer):
    self.evaluator, self.spec, self.metrics_log = evaluator, spec, metrics_log
    self.num_steps, self.timer, self.final = num_steps, timer, {}

  def __call__(self, step: int, params) -> float | None:
    with self.timer("dev evaluation"):
      if self.spec is None:
        return None
      # The student's embeddings are cached at the final step only (eval.py of that
      # checkpoint reuses them); earlier steps' would never be read again.
      result = self.evaluator.evaluate(self.spec, params, cache=step == self.num_steps)
      self.metrics_log.write(step, {f"dev_{k}": v for k, v in result.values.items()})
      if step == self.num_steps:
        self.final[self.spec.name] = result
      return result.values["MAP"]


class _Progress:
  """What a run shows and records as it goes: the progress bar over steps `start` to the
  last (process 0's), the metrics log, and the lines process 0 writes under the bar."""

  def __init__(self, config, start: int, metrics_log: MetricsLog, primary: bool):
    self.config, self.metrics_log, self.primary = config, metrics_log, primary
    self.bar = tqdm(range(start, config.train.num_train_steps), initial=start,
                    total=config.train.num_train_steps, desc=f"{config.stage}:{config.loss}",
                    disable=not (config.runtime.progress_bar and primary))

  def log(self, step: int, metrics, meter: Meter, trainer: Trainer) -> None:
    """The step's metrics (read from the devices), the window's rates and the compiled
    shapes, into the metrics log and the bar."""
    record = {k: float(v) for k, v in host.to_host(metrics).items()}
    record.update(meter.rates())
    record["compilations"] = trainer.compilations
    self.metrics_log.write(step, record)
    postfix = dict(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_sec']:.0f}")
    if "mfu" in record:
      postfix["mfu"] = f"{record['mfu']:.1%}"
    self.bar.set_postfix(**postfix)

  def say(self, line: str) -> None:
    if self.primary:
      self.bar.write(line)

  def end(self, trainer: Trainer, data, curves: Path) -> None:
    """The end of training: what the log keeps of it, the curves plotted, the log closed."""
    log.info("compiled the train step for %d shape(s)", trainer.compilations)
    data.report()
    if self.primary:
      plot_curves(self.metrics_log.records(), curves,
                  title=f"{self.config.stage} / {self.config.loss}")
    self.metrics_log.close()


def _check_finite(trainer: Trainer, step: int, checkpoints: RunCheckpoints,
                  paths: Workdir) -> None:
  """Stops the run, the last finite checkpoint on disk, if a loss up to `step` was not
  finite."""
  since = trainer.checked + 1
  bad = trainer.non_finite(step)
  if bad:
    checkpoints.finish()  # the last finite checkpoint on disk, not in flight
    raise TrainingError(
        f"non-finite loss at step {bad} (steps {since}-{step} ran since the last check); the "
        f"last finite checkpoint (step {checkpoints.latest_step()}) is kept in "
        f"{paths.checkpoints}. Lower config.train.learning_rate or raise config.ot.epsilon.")


def _halt(step: int, stop: StopSignals, checkpoints: RunCheckpoints, progress: _Progress):
  """Ends the run early after `step`, its checkpoints on disk: a stop request raises
  `Stopped`; `train.halt_after_steps` returns None."""
  progress.bar.close()
  checkpoints.finish()
  if stop.requested:
    print(f"stopped at step {step}; rerun the same command to resume", flush=True)
    raise Stopped(stop.exit_code)
  if progress.primary:
    print(f"halted after step {step} (halt_after_steps); rerun to resume", flush=True)


def _set_up(config, workdir: Path, primary: bool):
  """The prepared run, its checkpoints, its trainer (resumed where a checkpoint is) and its
  metrics log; the run's config written to the workdir."""
  run = prepare_run(config, workdir, primary)
  checkpoints = RunCheckpoints(workdir, run.config.train.keep_checkpoints)
  trainer = build_trainer(run.config, run.models, run.mesh, checkpoints=checkpoints,
                          primary=primary)
  paths = Workdir(workdir)
  if trainer.start and primary:
    print(f"resumed from step {trainer.start} ({paths.checkpoints})", flush=True)
  if primary:
    write_text_atomic(paths.config, run.config.to_json_best_effort(indent=2) + "\n")
  return run, checkpoints, trainer, MetricsLog(workdir, trainer.start, enabled=primary)


def _train(config, workdir: Path, primary: bool) -> RunResult | None:
  timer, paths = PhaseTimer(PHASES), Workdir(workdir)
  with timer("set-up"):
    run, checkpoints, trainer, metrics_log = _set_up(config, workdir, primary)
    config, num_steps = run.config, run.config.train.num_train_steps
    evaluator = Evaluator(run.models, config, mesh=run.mesh)
    dev = _DevEvaluation(evaluator, run.dev_spec, metrics_log, num_steps, timer)
    if trainer.start == 0 and config.eval.eval_at_start:
      dev(0, trainer.params())
    cadence = Cadence(config.train, trainer.start)
    progress = _Progress(config, trainer.start, metrics_log, primary)
    prefetcher = Prefetcher(run.data.build, trainer.start, num_steps, depth=config.data.prefetch)
    meter = Meter(peak=peak_flops(jax.devices()[0].device_kind, config.model.dtype))
  with timer("steps"):  # saving checkpoints counts as steps: the loop waits for the last one
    meter.reset()
    with StopSignals() as stop, prefetcher:
      for step in progress.bar:
        batch, (tokens, examples) = prefetcher.get(step)
        # Between log, evaluation and checkpoint steps nothing is read back from the devices:
        # the host dispatches step after step while the prefetch thread builds the next batch.
        metrics = trainer.step(batch)
        meter.add(tokens=tokens, examples=examples, flops=trainer.flops_for(batch))
        done, due = step + 1, cadence.due(step + 1)
        if not (due or stop.requested):
          continue
        checkpoints.check()  # a failed background save stops the run here
        _check_finite(trainer, done, checkpoints, paths)
        if due.log:
          progress.log(done, metrics, meter, trainer)
        dev_map = dev(done, trainer.params()) if due.eval else None
        if dev_map is not None:
          progress.say(f"step {done}: dev MAP {dev_map:.4f}")
        # Halting keeps the regular checkpoints, as a killed run would; best/ takes a better
        # dev MAP at any evaluation.
        checkpoints.save(done, trainer.state, dev_map, latest=due.save or stop.requested)
        if stop.requested or due.halt:
          return _halt(done, stop, checkpoints, progress)
        meter.reset()  # evaluation and saving are not training time
    progress.bar.close()
    checkpoints.finish()
    progress.end(trainer, run.data, paths.curves)
    run.data = prefetcher = None  # the training data is not needed by evaluation
    params = trainer.params()
  with timer("final evaluation"):
    final = Evaluated(num_steps, "final", str(paths.checkpoints / str(num_steps)))
    collections = evaluator.evaluate_all(run.specs, params, workdir, final, evaluated=dev.final,
                                         write=primary,
                                         progress=bool(config.runtime.progress_bar and primary))
  history = metrics_log.records()
  summary = start_comparison(history, paths.best)
  if summary and primary:
    print(summary, flush=True)
  return RunResult(step=num_steps, params=params, models=run.models, collections=collections,
                   history=history, seconds=timer.seconds)
