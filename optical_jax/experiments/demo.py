"""The embedded offline benchmark: English–Chichewa cross-lingual retrieval, end to end.

`python train.py --config configs/demo.py` (a config with a `demo` section) builds the Bible
collections, evaluates the teacher's rows (the en→en upper bound, its zero-shot retrieval),
distils one student per loss under the same step budget, and prints one table per test
collection (`demo.tables`; configs/demo.py: ny→en, the student encoding queries, and en→ny,
the student encoding passages, each with verse queries and with context queries):
dense MAP (with 95% paired-bootstrap intervals of each gain over zero-shot) and MAP when the
dense top 100 is reranked by MaxSim (the query encoder's tokens against the passage
encoder's), plus a figure: dev MAP against steps, and test MAP per row with its interval.

With several `demo.seeds`, every loss is trained once per seed and a seed table (per-seed MAP,
mean and spread, OT's comparisons per seed and pooled) follows each direction's main table,
which shows the first seed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import ml_collections
import numpy as np

from optical_jax.data.inputs import resolve_inputs
from optical_jax.evaluation import format_table, paired_bootstrap_interval
from optical_jax.evaluation.collections import CollectionResult, Evaluator, collection_specs
from optical_jax.experiments.teacher_rows import TeacherRows
from optical_jax.files.layout import DemoDir
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.models.student import DistillationModels
from optical_jax.training.loop import PHASES, train_and_evaluate

TABLE_MEASURES = ("MAP", "nDCG@10", "R@1", "R@10")
MAXSIM = "MAP, MaxSim top-100"
GAIN = "MAP gain over zero-shot [95% CI]"


@dataclasses.dataclass
class Row:
  """One system of the table: aggregate measures and per-query MAP, dense and MaxSim."""
  system: str
  values: dict
  dense: dict  # query id -> MAP
  maxsim: dict

  @classmethod
  def of(cls, system: str, result: CollectionResult) -> "Row":
    return cls(system, dict(result.values), result.per_query["MAP"],
               result.maxsim.per_query["MAP"])


@dataclasses.dataclass
class Direction:
  """One table of the demo: its `test` collection and `title`, the teacher's rows
  (`reference`, the zero-shot row last) and each seed's row per loss (`by_seed`, the first
  seed's in the main table)."""
  test: str
  title: str
  reference: list[Row]
  by_seed: dict[int, dict[str, Row]] = dataclasses.field(default_factory=dict)

  @property
  def rows(self) -> list[Row]:
    """The main table's rows: the teacher's, then the first seed's per loss."""
    return self.reference + list(next(iter(self.by_seed.values())).values())


@dataclasses.dataclass
class DemoReport:
  """The demo's results: one `Direction` per table, the first seed's dev MAP curves, where
  the time went (`seconds`: `{part: {stage: seconds}}`) and the wall time."""
  directions: list[Direction]
  curves: dict[str, list[tuple[int, float]]]
  seconds: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  minutes: float = 0.0


def _mean(per_query: dict) -> float:
  return float(np.mean(list(per_query.values())))


def _interval(system: dict, baseline: dict) -> str:
  gain, low, high = paired_bootstrap_interval(system, baseline)
  return f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"


def plot_report(report: DemoReport, path: Path, dev_label: str = "dev MAP") -> Path:
  """Left: dev MAP against steps per loss. Then, per direction (two to a row): test MAP per
  row, dense and MaxSim, with 95% bootstrap intervals over queries."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = len(report.directions)
  # The dev curve on the left, the directions two to a row beside it.
  cols, lines = min(panels, 2), -(-panels // 2)
  fig = plt.figure(figsize=(6 + 6.5 * cols, 4.6 * lines))
  grid = fig.add_gridspec(lines, 1 + cols, width_ratios=[1] + [1.15] * cols)
  left = fig.add_subplot(grid[:, 0])
  rights = [fig.add_subplot(grid[i // cols, 1 + i % cols]) for i in range(panels)]
  for loss, points in report.curves.items():
    if points:
      left.plot(*zip(*points), marker="o", label=loss)
  left.set(xlabel="training step", ylabel=dev_label, title="Dev MAP during distillation")
  left.grid(alpha=0.3)
  left.legend()
  for right, direction in zip(rights, report.directions):
    rows = direction.rows
    labels = [row.system.split(" (")[0] for row in rows]
    y = np.arange(len(rows))
    zeros = {q: 0.0 for q in rows[0].dense}
    for offset, kind, colour in ((-0.18, "dense", "tab:blue"), (0.18, "maxsim", "tab:orange")):
      stats = [paired_bootstrap_interval(getattr(row, kind), zeros) for row in rows]
      means = np.array([s[0] for s in stats])
      errors = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T
      right.barh(y + offset, means, height=0.36, xerr=errors, color=colour, capsize=3,
                 label="dense" if kind == "dense" else "MaxSim rerank of the dense top 100")
    right.set_yticks(y, labels)
    right.invert_yaxis()
    right.set(xlabel="test MAP (95% CI over queries)", title=direction.title.split(":")[0])
    right.grid(axis="x", alpha=0.3)
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# (label, system, baseline): what each difference tells about OT (paired over queries).
COMPARISONS = (("OT's own share", "ot+contrastive", "contrastive"), ("OT vs MSE", "ot", "mse"),
               ("OT vs contrastive", "ot", "contrastive"))


def comparisons(per_loss: dict[str, dict[str, float]], suffix: str = "") -> list[str]:
  """`label: a − b = +x.xxxx [lo, hi]` (MAP, paired bootstrap over queries, 95%) for each of
  `COMPARISONS` whose two losses ran."""
  return [f"{label}{suffix}: {system} − {baseline} = "
          f"{_interval(per_loss[system], per_loss[baseline])}"
          for label, system, baseline in COMPARISONS
          if system in per_loss and baseline in per_loss]


def seed_report(by_seed: dict[int, dict[str, Row]]) -> str:
  """Per-seed MAP of each loss with mean and spread, dense and under MaxSim; OT's comparisons
  per seed and pooled (per-query MAP averaged over seeds, then the paired bootstrap)."""
  seeds = list(by_seed)
  losses = list(by_seed[seeds[0]])
  lines = []
  for kind, title, suffix in (("dense", "dense MAP", ""), ("maxsim", "MaxSim MAP", ", MaxSim")):
    table = []
    for loss in losses:
      maps = [_mean(getattr(by_seed[s][loss], kind)) for s in seeds]
      table.append({"loss": loss, **{f"seed {s}": m for s, m in zip(seeds, maps)},
                    "mean": float(np.mean(maps)), "sd": float(np.std(maps, ddof=1))})
    lines += [f"{title}:", "", format_table(table, ["loss", *[f"seed {s}" for s in seeds],
                                                     "mean", "sd"]), ""]
    for s in seeds:
      lines += comparisons({loss: getattr(row, kind) for loss, row in by_seed[s].items()},
                           f"{suffix}, seed {s}")
    per_query = lambda loss, s: getattr(by_seed[s][loss], kind)
    pooled = {loss: {q: float(np.mean([per_query(loss, s)[q] for s in seeds]))
                     for q in per_query(loss, seeds[0])} for loss in losses}
    lines += comparisons(pooled, f"{suffix}, {len(seeds)} seeds pooled") + [""]
  return "\n".join(lines).rstrip("\n")


def format_direction(direction: Direction, measures=TABLE_MEASURES) -> str:
  """One direction's main table (measures, MaxSim MAP, gain over zero-shot with its
  interval), OT's comparisons dense and under MaxSim, and with several seeds the seed
  tables."""
  rows, zero_shot = direction.rows, direction.reference[-1]
  table = [{"system": row.system, **{m: row.values[m] for m in measures},
            MAXSIM: _mean(row.maxsim),
            GAIN: _interval(row.dense, zero_shot.dense) if i >= len(direction.reference) else ""}
           for i, row in enumerate(rows)]
  first = next(iter(direction.by_seed.values()))
  lines = (comparisons({loss: row.dense for loss, row in first.items()})
           + comparisons({loss: row.maxsim for loss, row in first.items()}, ", MaxSim"))
  seeds = list(direction.by_seed)
  return (f"{direction.title}\n\n"
          + format_table(table, ["system", *measures, MAXSIM, GAIN])
          + "\n\n" + "".join(f"{line}\n" for line in lines)
          + (f"\nTraining seeds {', '.join(map(str, seeds))}:\n\n"
             + seed_report(direction.by_seed) + "\n" if len(seeds) > 1 else ""))


def format_report(report: DemoReport, measures=TABLE_MEASURES) -> str:
  """Every direction's tables (`format_direction`), under one heading."""
  return ("Held-out books (Ruth, Jonah, Mark, Acts, James, 1 John). Intervals: paired bootstrap "
          "over queries (95%), query sampling only.\n\n"
          + "\n".join(format_direction(d, measures) for d in report.directions))


STAGES = PHASES  # where a run's time went


def time_table(report: DemoReport) -> str:
  """Where the time went, in seconds: the inputs and the teacher's rows, then each run's
  set-up (vocabulary, tokenisation, models, compilation), steps, dev evaluations and final
  evaluation (MaxSim included)."""
  table = [{"part": part, **{stage: by_stage.get(stage, 0.0) for stage in STAGES},
            "total": sum(by_stage.values())} for part, by_stage in report.seconds.items()]
  return format_table(table, ["part", *STAGES, "total"], digits=1)


def report_values(report: DemoReport, measures=TABLE_MEASURES) -> dict:
  """`{test collection: {system: {measure: value}}}` of the main tables, MaxSim MAP included."""
  return {d.test: {row.system: {**{m: row.values[m] for m in measures},
                                MAXSIM: _mean(row.maxsim)} for row in d.rows}
          for d in report.directions}


def reference_rows(config) -> dict[str, Row]:
  """The teacher's own rows (`config.demo.reference_collections`: the en→en upper bound and
  the zero-shot rows), by collection name, each collection's `label` naming its row; kept
  across runs (`teacher_rows`), so a later demo reads them instead of evaluating again."""
  teacher = load_encoder(config.model.teacher)
  kept, evaluator, rows = TeacherRows(config, teacher), None, {}
  for spec in collection_specs(config, config.demo.reference_collections):
    fields = kept.get(spec)
    if fields is None:
      evaluator = evaluator or Evaluator(DistillationModels(teacher=teacher, student=teacher),
                                         config)
      row = Row.of(spec.label, evaluator.evaluate(spec, {"encoder": teacher.params}))
      fields = {"values": row.values, "dense": row.dense, "maxsim": row.maxsim}
      kept.put(spec, fields)
    rows[spec.name] = Row(spec.label, **fields)
  return rows


def run_demo(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains one student per loss and seed, evaluates them and the teacher's reference rows,
  writes `results.md` and `dev_map.png` into `workdir`, prints the report and returns the main
  tables' values (`report_values`; empty when a run halted early)."""
  start = time.perf_counter()
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  paths = DemoDir(workdir)
  config = resolve_inputs(config).config
  seconds = {"inputs and the teacher's rows": {"set-up": time.perf_counter() - start}}
  started = time.perf_counter()
  references = reference_rows(config)
  report = DemoReport(
      directions=[Direction(t.test, t.title, [references[name] for name in t.references])
                  for t in config.demo.tables], curves={}, seconds=seconds)
  seconds["inputs and the teacher's rows"]["final evaluation"] = time.perf_counter() - started
  seeds = list(config.demo.get("seeds") or [config.seed])
  steps = config.train.num_train_steps
  for seed in seeds:
    for i, loss in enumerate(config.demo.losses):
      run_config = ml_collections.ConfigDict(config.to_dict())
      run_config.loss, run_config.seed = loss, seed
      # Every student starts as the teacher, so step 0's dev MAP is the first run's.
      run_config.eval.eval_at_start = config.eval.eval_at_start and i == 0 and seed == seeds[0]
      run = paths.run(loss, None if seed == seeds[0] else seed)
      result = train_and_evaluate(run_config, run.root)
      if result is None:  # halted early: resume later
        return {}
      for direction in report.directions:
        direction.by_seed.setdefault(seed, {})[loss] = Row.of(
            f"{loss} distillation ({steps} steps)", result.collections[direction.test])
      seconds[f"{loss}, seed {seed}"] = result.seconds
      if seed == seeds[0]:
        curve = [(r["step"], r["dev_MAP"]) for r in result.history if "dev_MAP" in r]
        first = next(iter(report.curves.values()), curve)
        if first and first[0][0] == 0 and curve[:1] != first[:1]:
          curve.insert(0, first[0])
        report.curves[loss] = curve
  plot = plot_report(report, paths.figure,
                     dev_label=f"dev MAP ({config.eval.dev_collection})")
  report.minutes = (time.perf_counter() - start) / 60
  text = (format_report(report)
          + f"\nfigure: {plot}\ntotal time: {report.minutes:.1f} min\n\n"
          + "Where the time went (s):\n\n" + time_table(report) + "\n")
  paths.report.write_text(text)
  print("\n" + text, flush=True)
  return report_values(report)
