"""Tables and bootstrap intervals for evaluation results."""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

import numpy as np

from optical_jax.evaluation.io import read_qrels, read_run
from optical_jax.evaluation.metrics import DEFAULT_MEASURES, evaluate, evaluate_per_query


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], *,
                 digits: int = 4) -> str:
  """A Markdown table; floats get `digits` decimals."""
  cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def paired_bootstrap_interval(system: Mapping[str, float], baseline: Mapping[str, float], *,
                              samples: int = 2000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float, float]:
  """Mean per-query gain of `system` over `baseline` and its bootstrap interval."""
  queries = sorted(set(system) & set(baseline))
  gains = np.array([system[q] - baseline[q] for q in queries])
  rng = np.random.default_rng(seed)
  means = gains[rng.integers(0, len(gains), (samples, len(gains)))].mean(axis=1)
  low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
  return float(gains.mean()), float(low), float(high)


def _coverage_notes(run: Mapping, qrels: Mapping, run_path: str, qrels_path: str) -> list[str]:
  """How many judged queries the run covers, and why every measure would be 0 if so."""
  covered = sorted(set(run) & set(qrels))
  notes = [f"judged queries in the run: {len(covered)} of {len(qrels)}"]
  if not run:
    notes.append(f"warning: the run {run_path} has no results: every measure is 0")
  if not qrels:
    notes.append(f"warning: the qrels {qrels_path} judge no query: every measure is 0")
  if run and qrels and not covered:
    example = lambda ids: ", ".join(repr(q) for q in sorted(ids)[:3])
    notes.append(f"warning: no query of the run is judged (run queries: {example(run)}; "
                 f"judged: {example(qrels)}): every measure is 0; do the query ids match?")
  return notes


def score_run_file(run_path: str, qrels_path: str, *, measures: Sequence[str] = DEFAULT_MEASURES,
                   per_query: bool = False) -> str:
  """trec_eval-style report of a TREC run file against qrels.

  Writes to stderr how many judged queries the run covers, and a warning when that is none,
  or the run or the qrels are empty (every measure is then 0).
  """
  run, qrels = read_run(run_path), read_qrels(qrels_path)
  for note in _coverage_notes(run, qrels, run_path, qrels_path):
    print(note, file=sys.stderr)
  lines = [f"{'measure':<10} {'query':<12} value"]
  if per_query:
    for name, values in evaluate_per_query(run, qrels, measures).items():
      lines += [f"{name:<10} {qid:<12} {value:.4f}" for qid, value in values.items()]
  for name, value in evaluate(run, qrels, measures).items():
    lines.append(f"{name:<10} {'all':<12} {value:.4f}")
  return "\n".join(lines)
