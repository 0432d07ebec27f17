"""The on-disk layout: every path of a run's workdir (`Workdir`) and of `runtime.cache_dir`
(`CacheDir`), named here and nowhere else (docs/architecture.md shows both as tables).

The classes only name paths: they create, read and normalise nothing beyond joining (a
`CacheDir` expands `~`, as every reader of `runtime.cache_dir` does; a workdir is taken as
given, its callers resolve it). Entries inside a cache directory (`tokens-KEY`,
`student-KEY`, ...) are named by the module that keys them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


class _Below:
  """A layout's path below its `root`: `checkpoints = _Below("checkpoints")` reads as
  `Workdir(w).checkpoints == w / "checkpoints"` (`kind` wraps the path, e.g. `CorpusCache`)."""

  def __init__(self, relative: str, kind: type | None = None):
    self.relative, self.kind = relative, kind

  def __get__(self, layout, owner=None):
    if layout is None:
      return self
    path = layout.root / self.relative
    return path if self.kind is None else self.kind(path)


def fingerprint_memo(directory: str | os.PathLike) -> Path:
  """The files' digests (by size and modification time) that `fingerprint` remembers in a
  cache directory (`runtime.cache_dir` or its corpus cache)."""
  return Path(directory).expanduser() / "fingerprints.json"


@dataclasses.dataclass(frozen=True)
class Results:
  """One evaluation of a run's parameters (`Workdir.results(step)`)."""

  root: Path

  # `eval.json`: the measures, the files evaluated and the config (written last).
  summary = _Below("eval.json")
  per_query = _Below("eval_per_query.json")
  runs = _Below("runs")

  def run(self, collection: str) -> Path:
    """The TREC run file of one collection."""
    return self.runs / f"{collection}.trec"


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A training run's directory (train.py's and eval.py's `--workdir`)."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root))

  # The latest `keep_checkpoints` Orbax checkpoints, one directory per step.
  checkpoints = _Below("checkpoints")
  # The checkpoint with the best dev MAP.
  best = _Below("best")
  # Checkpoints that could not be read, set aside as `checkpoints-STEP` or `best-STEP`.
  corrupt_checkpoints = _Below("corrupt_checkpoints")
  # The run's config, inputs resolved (what eval.py and a resume read back).
  config = _Below("config.json")
  metrics = _Below("metrics.jsonl")
  tensorboard = _Below("tensorboard")
  curves = _Below("curves.png")
  # The student the run starts from, when it is built (vocabulary adaptation).
  student_init = _Below("student_init")
  eval = _Below("eval")

  def results(self, step: int) -> Results:
    """Where the evaluation of the parameters of training step `step` is written."""
    return Results(self.eval / f"step_{step}")

  def evaluated_steps(self) -> list[int]:
    """The steps with a complete evaluation (an `eval.json`)."""
    prefix = "step_"
    return [int(p.name[len(prefix):]) for p in self.eval.glob(f"{prefix}*")
            if p.name[len(prefix):].isdigit() and Results(p).summary.is_file()]

  logs = _Below("logs")

  @property
  def library_log(self) -> Path:
    """What the libraries log (kept off the console)."""
    return self.logs / "libraries.log"

  # Held (`flock`) by the one process that writes the workdir.
  lock = _Below(".lock")


@dataclasses.dataclass(frozen=True)
class CorpusCache:
  """What is kept per corpus file by its content (`CacheDir.corpus`)."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root).expanduser())

  # Each file's line offsets and document ids.
  scans = _Below("scans")
  # Each file's token ids, per tokenizer, length and prompt.
  tokens = _Below("tokens")


@dataclasses.dataclass(frozen=True)
class CacheDir:
  """`runtime.cache_dir`: what any run may reuse, each entry keyed by what it depends on."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(os.fspath(self.root)).expanduser())

  @property
  def fingerprints(self) -> Path:
    return fingerprint_memo(self.root)

  # The training data's token arrays and pair windows.
  tokens = _Below("tokens")
  # The teacher's token vectors of the training data (`data.teacher_cache`).
  teacher_tokens = _Below("teacher_tokens")
  # Pooled embeddings of evaluation texts, keyed by the parameters.
  embeddings = _Below("embeddings")
  corpus = _Below("corpus", CorpusCache)
  # Compiled XLA programs (`runtime.compilation_cache`).
  xla = _Below("xla")
  # Built CIRAL bitext and dev collections.
  bitext = _Below("bitext")
  # The built Bible data (`bible:` references).
  bible = _Below("bible")
  # Adapted students and lexicons (vocabulary adaptation).
  adaptation = _Below("adaptation")
  # The demo's teacher rows (`experiments.demo.reference_rows`), keyed by all that made them.
  reference_rows = _Below("reference_rows")
  # Checkpoints the benchmarks build for themselves.
  benchmark_checkpoints = _Below("benchmark_checkpoints")


@dataclasses.dataclass(frozen=True)
class DemoDir:
  """The demo's directory (`experiments.demo.run_demo`): its report and one run's workdir per
  loss and seed."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root))

  report = _Below("results.md")
  # The dev MAP curves of the first seed's runs.
  figure = _Below("dev_map.png")

  def run(self, loss: str, seed: int | None = None) -> Workdir:
    """The workdir of `loss`'s run (`seed` None: the first seed's)."""
    name = loss.replace("+", "_")
    return Workdir(self.root / (name if seed is None else f"{name}-seed{seed}"))
