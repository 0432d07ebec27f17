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


def fingerprint_memo(directory: str | os.PathLike) -> Path:
  """The files' digests (by size and modification time) that `fingerprint` remembers in a
  cache directory (`runtime.cache_dir` or its corpus cache)."""
  return Path(directory).expanduser() / "fingerprints.json"


@dataclasses.dataclass(frozen=True)
class Results:
  """One evaluation of a run's parameters (`Workdir.results(step)`)."""

  root: Path

  @property
  def summary(self) -> Path:
    """`eval.json`: the measures, the files evaluated and the config (written last)."""
    return self.root / "eval.json"

  @property
  def per_query(self) -> Path:
    return self.root / "eval_per_query.json"

  @property
  def runs(self) -> Path:
    return self.root / "runs"

  def run(self, collection: str) -> Path:
    """The TREC run file of one collection."""
    return self.runs / f"{collection}.trec"


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A training run's directory (train.py's and eval.py's `--workdir`)."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root))

  @property
  def checkpoints(self) -> Path:
    """The latest `keep_checkpoints` Orbax checkpoints, one directory per step."""
    return self.root / "checkpoints"

  @property
  def best(self) -> Path:
    """The checkpoint with the best dev MAP."""
    return self.root / "best"

  @property
  def corrupt_checkpoints(self) -> Path:
    """Checkpoints that could not be read, set aside as `checkpoints-STEP` or `best-STEP`."""
    return self.root / "corrupt_checkpoints"

  @property
  def config(self) -> Path:
    """The run's config, inputs resolved (what eval.py and a resume read back)."""
    return self.root / "config.json"

  @property
  def metrics(self) -> Path:
    return self.root / "metrics.jsonl"

  @property
  def tensorboard(self) -> Path:
    return self.root / "tensorboard"

  @property
  def curves(self) -> Path:
    return self.root / "curves.png"

  @property
  def student_init(self) -> Path:
    """The student the run starts from, when it is built (vocabulary adaptation)."""
    return self.root / "student_init"

  @property
  def eval(self) -> Path:
    return self.root / "eval"

  def results(self, step: int) -> Results:
    """Where the evaluation of the parameters of training step `step` is written."""
    return Results(self.eval / f"step_{step}")

  def evaluated_steps(self) -> list[int]:
    """The steps with a complete evaluation (an `eval.json`)."""
    prefix = "step_"
    return [int(p.name[len(prefix):]) for p in self.eval.glob(f"{prefix}*")
            if p.name[len(prefix):].isdigit() and Results(p).summary.is_file()]

  @property
  def logs(self) -> Path:
    return self.root / "logs"

  @property
  def library_log(self) -> Path:
    """What the libraries log (kept off the console)."""
    return self.logs / "libraries.log"

  @property
  def lock(self) -> Path:
    """Held (`flock`) by the one process that writes the workdir."""
    return self.root / ".lock"


@dataclasses.dataclass(frozen=True)
class CorpusCache:
  """What is kept per corpus file by its content (`CacheDir.corpus`)."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root).expanduser())

  @property
  def scans(self) -> Path:
    """Each file's line offsets and document ids."""
    return self.root / "scans"

  @property
  def tokens(self) -> Path:
    """Each file's token ids, per tokenizer, length and prompt."""
    return self.root / "tokens"


@dataclasses.dataclass(frozen=True)
class CacheDir:
  """`runtime.cache_dir`: what any run may reuse, each entry keyed by what it depends on."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(os.fspath(self.root)).expanduser())

  @property
  def fingerprints(self) -> Path:
    return fingerprint_memo(self.root)

  @property
  def tokens(self) -> Path:
    """The training data's token arrays and pair windows."""
    return self.root / "tokens"

  @property
  def teacher_tokens(self) -> Path:
    """The teacher's token vectors of the training data (`data.teacher_cache`)."""
    return self.root / "teacher_tokens"

  @property
  def embeddings(self) -> Path:
    """Pooled embeddings of evaluation texts, keyed by the parameters."""
    return self.root / "embeddings"

  @property
  def corpus(self) -> CorpusCache:
    return CorpusCache(self.root / "corpus")

  @property
  def xla(self) -> Path:
    """Compiled XLA programs (`runtime.compilation_cache`)."""
    return self.root / "xla"

  @property
  def bitext(self) -> Path:
    """Built CIRAL bitext and dev collections."""
    return self.root / "bitext"

  @property
  def bible(self) -> Path:
    """The built Bible data (`bible:` references)."""
    return self.root / "bible"

  @property
  def adaptation(self) -> Path:
    """Adapted students and lexicons (vocabulary adaptation)."""
    return self.root / "adaptation"

  @property
  def benchmark_checkpoints(self) -> Path:
    """Checkpoints the benchmarks build for themselves."""
    return self.root / "benchmark_checkpoints"


@dataclasses.dataclass(frozen=True)
class DemoDir:
  """The demo's directory (`experiments.demo.run_demo`): its report and one run's workdir per
  loss and seed."""

  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root))

  @property
  def report(self) -> Path:
    return self.root / "results.md"

  @property
  def figure(self) -> Path:
    """The dev MAP curves of the first seed's runs."""
    return self.root / "dev_map.png"

  def run(self, loss: str, seed: int | None = None) -> Workdir:
    """The workdir of `loss`'s run (`seed` None: the first seed's)."""
    name = loss.replace("+", "_")
    return Workdir(self.root / (name if seed is None else f"{name}-seed{seed}"))
