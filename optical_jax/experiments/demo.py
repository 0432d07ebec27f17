"""The embedded offline benchmark: English–Chichewa cross-lingual retrieval, end to end.

`python train.py --config configs/demo.py` (a config with a `demo` section) builds the Bible collections, evaluates the
teacher's en→en upper bound and its zero-shot ny→en retrieval, distils one student per loss
under the same step budget, and prints one table (with 95% paired-bootstrap intervals of
each gain over zero-shot) plus a plot of dev MAP against steps for every loss.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections

from optical_jax.assets import resolve
from optical_jax.evaluation import (evaluate, evaluate_per_query, format_table,
                                    paired_bootstrap_interval, read_corpus, read_qrels,
                                    read_topics, retrieve)
from optical_jax.evaluation.collections import teacher_encoder
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.training.loop import train_and_evaluate

TABLE_MEASURES = ("MAP", "nDCG@10", "R@1", "R@10")


def _teacher_rows(config, measures) -> list[tuple[str, dict, dict]]:
  """(name, aggregate, per-query) for the teacher on English and on Chichewa queries."""
  r = lambda ref: resolve(ref, config.runtime.cache_dir)
  teacher = teacher_encoder(load_encoder(r(config.model.teacher)), config)
  corpus = read_corpus(r("bible:test/passages.en.tsv"))
  qrels = read_qrels(r("bible:test/qrels.txt"))
  rows = []
  for name, topics in (("en→en upper bound (teacher, English queries)", "queries.en.tsv"),
                       ("zero-shot (teacher, Chichewa queries)", "queries.ny.tsv")):
    run = retrieve(read_topics(r(f"bible:test/{topics}")), corpus, query_encoder=teacher,
                   doc_encoder=teacher, k=config.eval.k)
    rows.append((name, evaluate(run, qrels, measures), evaluate_per_query(run, qrels, measures)))
  return rows


def plot_dev_map(curves: dict[str, list[tuple[int, float]]], path: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4))
  for loss, points in curves.items():
    if points:
      ax.plot(*zip(*points), marker="o", label=loss)
  ax.set(xlabel="training step", ylabel="dev MAP (Chichewa → English)",
         title="Distillation on English–Chichewa Bible bitext")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


# (label, system, baseline): what each difference tells about OT (paired over queries).
COMPARISONS = (("OT's own share", "ot+contrastive", "contrastive"), ("OT vs MSE", "ot", "mse"))


def comparisons(per_loss: dict[str, dict[str, float]]) -> list[str]:
  """`label: a − b = +x.xxxx [lo, hi]` (MAP, paired bootstrap over queries, 95%) for each of
  `COMPARISONS` whose two losses ran."""
  lines = []
  for label, system, baseline in COMPARISONS:
    if system in per_loss and baseline in per_loss:
      gain, low, high = paired_bootstrap_interval(per_loss[system], per_loss[baseline])
      lines.append(f"{label}: {system} − {baseline} = {gain:+.4f} [{low:+.4f}, {high:+.4f}]")
  return lines


def run_demo(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  start = time.perf_counter()
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  measures = list(TABLE_MEASURES)
  teacher_rows = _teacher_rows(config, measures)
  zero_shot = teacher_rows[1][2]["MAP"]
  table, curves, per_loss = [], {}, {}
  for name, values, _ in teacher_rows:
    table.append({"system": name, **values, "MAP gain over zero-shot [95% CI]": ""})
  for i, loss in enumerate(config.demo.losses):
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.loss = loss
    # Every student starts as the teacher, so step 0's dev MAP is the first run's.
    run_config.eval.eval_at_start = config.eval.eval_at_start and i == 0
    run_dir = workdir / loss.replace("+", "_")
    results = train_and_evaluate(run_config, run_dir)
    if not results:  # halted early: resume later
      return {}
    per_query = json.loads((run_dir / "eval_per_query.json").read_text())["test-ny-en"]
    per_loss[loss] = per_query["MAP"]
    gain, low, high = paired_bootstrap_interval(per_query["MAP"], zero_shot)
    table.append({"system": f"{loss} distillation ({config.train.num_train_steps} steps)",
                  **{m: results["test-ny-en"][m] for m in measures},
                  "MAP gain over zero-shot [95% CI]": f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"})
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curves[loss] = [(r["step"], r["dev_MAP"]) for r in records if "dev_MAP" in r]
    first = next(iter(curves.values()))
    if first and first[0][0] == 0 and curves[loss][:1] != first[:1]:
      curves[loss].insert(0, first[0])
  plot = plot_dev_map(curves, workdir / "dev_map.png")
  minutes = (time.perf_counter() - start) / 60
  text = ("Held-out books (Ruth, Jonah, Mark, Acts, James, 1 John): 500 Chichewa verse queries, "
          "431 English 5-verse passages.\n\n"
          + format_table(table, ["system", *measures, "MAP gain over zero-shot [95% CI]"])
          + "\n\n" + "".join(f"{line}\n" for line in comparisons(per_loss))
          + f"\ndev MAP curves: {plot}\ntotal time: {minutes:.1f} min\n")
  (workdir / "results.md").write_text(text)
  print("\n" + text, flush=True)
  return {row["system"]: {m: row[m] for m in measures} for row in table}
