"""The embedded offline benchmark: English–Chichewa cross-lingual retrieval, end to end.

`python train.py --config configs/demo.py` (a config with a `demo` section) builds the Bible
collections, evaluates the teacher's en→en upper bound and its zero-shot ny→en retrieval,
distils one student per loss under the same step budget, and prints one table: dense MAP (with
95% paired-bootstrap intervals of each gain over zero-shot) and MAP when the dense top 100 is
reranked by MaxSim (the student's query tokens against the teacher's passage tokens), plus a
figure: dev MAP against steps, and test MAP per row with its interval.

With several `demo.seeds`, every loss is trained once per seed and a seed table (per-seed MAP,
mean and spread, OT's own share per seed and pooled) follows the main table, which shows the
first seed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from optical_jax.assets import resolve
from optical_jax.evaluation import (evaluate, evaluate_per_query, format_table,
                                    maxsim_reranker, paired_bootstrap_interval, read_corpus,
                                    read_qrels, read_run, read_topics, rerank_run, retrieve)
from optical_jax.evaluation.collections import side_encoders, teacher_encoder
from optical_jax.inputs import resolve_inputs
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.models.student import build_models
from optical_jax.training.checkpoints import restore_params
from optical_jax.training.loop import train_and_evaluate
from optical_jax.training.student_init import prepare_student

TABLE_MEASURES = ("MAP", "nDCG@10", "R@1", "R@10")
MAXSIM = "MAP, MaxSim top-100"
GAIN = "MAP gain over zero-shot [95% CI]"
RERANK_DEPTH = 100


@dataclasses.dataclass
class Row:
  """One system of the table: aggregate measures and per-query MAP, dense and MaxSim."""
  system: str
  values: dict
  dense: dict  # query id -> MAP
  maxsim: dict


class _TestSet:
  """The held-out books: Chichewa and English verse queries, English passages, qrels, and the
  teacher's passage token embeddings (computed once, shared by every MaxSim rerank)."""

  def __init__(self, config):
    r = lambda ref: resolve(ref, config.runtime.cache_dir)
    self.teacher = teacher_encoder(load_encoder(r(config.model.teacher)), config)
    self.corpus = read_corpus(r("bible:test/passages.en.tsv"))
    self.qrels = read_qrels(r("bible:test/qrels.txt"))
    self.topics = {lang: read_topics(r(f"bible:test/queries.{lang}.tsv")) for lang in ("en", "ny")}
    self._doc_tokens = None

  def doc_tokens(self) -> dict:
    if self._doc_tokens is None:
      ids = list(self.corpus)
      tokens = self.teacher.encode_tokens([self.corpus[d] for d in ids], desc="passage tokens")
      self._doc_tokens = dict(zip(ids, tokens))
    return self._doc_tokens

  def maxsim_map(self, run, query_encoder, lang: str = "ny") -> dict:
    """Per-query MAP of `run` after MaxSim reranks its top `RERANK_DEPTH`."""
    topics = self.topics[lang]
    ids = list(topics)
    tokens = query_encoder.encode_tokens([topics[q] for q in ids], desc="query tokens",
                                         progress=False)
    reranked = rerank_run(run, maxsim_reranker(dict(zip(ids, tokens)), self.doc_tokens()),
                          depth=RERANK_DEPTH)
    return evaluate_per_query(reranked, self.qrels, ["MAP"])["MAP"]

  def teacher_rows(self, config, measures) -> list[Row]:
    rows = []
    for name, lang in (("en→en upper bound (teacher, English queries)", "en"),
                       ("zero-shot (teacher, Chichewa queries)", "ny")):
      run = retrieve(self.topics[lang], self.corpus, query_encoder=self.teacher,
                     doc_encoder=self.teacher, k=config.eval.k)
      rows.append(Row(name, evaluate(run, self.qrels, measures),
                      evaluate_per_query(run, self.qrels, ["MAP"])["MAP"],
                      self.maxsim_map(run, self.teacher, lang)))
    return rows

  def student_row(self, name: str, run_config, run_dir: Path, results: dict) -> Row:
    models = build_models(prepare_student(run_config, run_dir))
    params, _, _ = restore_params(run_dir, "latest")  # the step the table's results are from
    student = side_encoders(models, params, run_config)["student"]
    run = read_run(run_dir / "runs" / "test-ny-en.trec")
    per_query = json.loads((run_dir / "eval_per_query.json").read_text())["test-ny-en"]
    return Row(name, dict(results["test-ny-en"]), per_query["MAP"],
               self.maxsim_map(run, student))


def _mean(per_query: dict) -> float:
  return float(np.mean(list(per_query.values())))


def _interval(system: dict, baseline: dict) -> str:
  gain, low, high = paired_bootstrap_interval(system, baseline)
  return f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"


def plot_results(curves: dict[str, list[tuple[int, float]]], rows: list[Row], path: Path) -> Path:
  """Left: dev MAP against steps per loss. Right: test MAP per row, dense and MaxSim, with
  95% bootstrap intervals over queries."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4),
                                    gridspec_kw={"width_ratios": [1, 1.15]})
  for loss, points in curves.items():
    if points:
      left.plot(*zip(*points), marker="o", label=loss)
  left.set(xlabel="training step", ylabel="dev MAP (Chichewa → English)",
           title="Dev MAP during distillation")
  left.grid(alpha=0.3)
  left.legend()
  labels = [row.system.split(" (")[0] for row in rows]
  y = np.arange(len(rows))
  zeros = {q: 0.0 for q in rows[0].dense}
  for offset, kind, colour in ((-0.18, "dense", "tab:blue"), (0.18, "maxsim", "tab:orange")):
    stats = [paired_bootstrap_interval(getattr(row, kind), zeros) for row in rows]
    means = np.array([s[0] for s in stats])
    errors = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T
    right.barh(y + offset, means, height=0.36, xerr=errors, color=colour, capsize=3,
               label="dense" if kind == "dense" else f"MaxSim rerank of the dense top {RERANK_DEPTH}")
  right.set_yticks(y, labels)
  right.invert_yaxis()
  right.set(xlabel="test MAP (95% CI over queries)", title="Held-out books")
  right.grid(axis="x", alpha=0.3)
  right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


# (label, system, baseline): what each difference tells about OT (paired over queries).
COMPARISONS = (("OT's own share", "ot+contrastive", "contrastive"), ("OT vs MSE", "ot", "mse"))


def comparisons(per_loss: dict[str, dict[str, float]], suffix: str = "") -> list[str]:
  """`label: a − b = +x.xxxx [lo, hi]` (MAP, paired bootstrap over queries, 95%) for each of
  `COMPARISONS` whose two losses ran."""
  return [f"{label}{suffix}: {system} − {baseline} = "
          f"{_interval(per_loss[system], per_loss[baseline])}"
          for label, system, baseline in COMPARISONS
          if system in per_loss and baseline in per_loss]


def seed_report(by_seed: dict[int, dict[str, Row]]) -> str:
  """Per-seed MAP of each loss with mean and spread, dense and under MaxSim; OT's own share per
  seed and pooled (per-query MAP averaged over seeds, then the paired bootstrap)."""
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


def _run_dir(workdir: Path, loss: str, seed: int, first_seed: int) -> Path:
  name = loss.replace("+", "_")
  return workdir / (name if seed == first_seed else f"{name}-seed{seed}")


def run_demo(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  start = time.perf_counter()
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  config = resolve_inputs(config).config
  measures = list(TABLE_MEASURES)
  test = _TestSet(config)
  rows = test.teacher_rows(config, measures)
  seeds = list(config.demo.get("seeds") or [config.seed])
  steps = config.train.num_train_steps
  by_seed: dict[int, dict[str, Row]] = {}
  curves = {}
  for seed in seeds:
    by_seed[seed] = {}
    for i, loss in enumerate(config.demo.losses):
      run_config = ml_collections.ConfigDict(config.to_dict())
      run_config.loss, run_config.seed = loss, seed
      # Every student starts as the teacher, so step 0's dev MAP is the first run's.
      run_config.eval.eval_at_start = config.eval.eval_at_start and i == 0 and seed == seeds[0]
      run_dir = _run_dir(workdir, loss, seed, seeds[0])
      results = train_and_evaluate(run_config, run_dir)
      if not results:  # halted early: resume later
        return {}
      by_seed[seed][loss] = test.student_row(f"{loss} distillation ({steps} steps)", run_config,
                                             run_dir, results)
      if seed == seeds[0]:
        records = [json.loads(line)
                   for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[loss] = [(r["step"], r["dev_MAP"]) for r in records if "dev_MAP" in r]
        first = next(iter(curves.values()))
        if first and first[0][0] == 0 and curves[loss][:1] != first[:1]:
          curves[loss].insert(0, first[0])
  rows += list(by_seed[seeds[0]].values())
  zero_shot = rows[1]
  table = [{"system": row.system, **{m: row.values[m] for m in measures},
            MAXSIM: _mean(row.maxsim),
            GAIN: _interval(row.dense, zero_shot.dense) if i >= 2 else ""}
           for i, row in enumerate(rows)]
  first = by_seed[seeds[0]]
  lines = (comparisons({loss: row.dense for loss, row in first.items()})
           + comparisons({loss: row.maxsim for loss, row in first.items()}, ", MaxSim"))
  plot = plot_results(curves, rows, workdir / "dev_map.png")
  minutes = (time.perf_counter() - start) / 60
  text = ("Held-out books (Ruth, Jonah, Mark, Acts, James, 1 John): 500 Chichewa verse queries, "
          "431 English 5-verse passages. Intervals: paired bootstrap over queries (95%), "
          "query sampling only.\n\n"
          + format_table(table, ["system", *measures, MAXSIM, GAIN])
          + "\n\n" + "".join(f"{line}\n" for line in lines)
          + (f"\nTraining seeds {', '.join(map(str, seeds))}:\n\n"
             + seed_report(by_seed) + "\n" if len(seeds) > 1 else "")
          + f"\nfigure: {plot}\ntotal time: {minutes:.1f} min\n")
  (workdir / "results.md").write_text(text)
  print("\n" + text, flush=True)
  return {row["system"]: {m: row[m] for m in [*measures, MAXSIM]} for row in table}
