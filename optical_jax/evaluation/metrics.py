"""Retrieval metrics with trec_eval's semantics, in numpy.

- A run ranks each query's documents by score, descending; ties are broken as trec_eval
  breaks them, by document id in descending (byte) order.
- Relevance >= 1 counts as relevant for MAP, P, R and RR; nDCG uses the graded judgment as
  gain (non-positive judgments gain nothing) and the ideal ranking of all judged documents.
- Judged documents missing from the run count as not retrieved.
- Aggregates average over the judged queries (those in the qrels); a judged query missing
  from the run, or with nothing relevant, scores 0 (`trec_eval -c`, as ir_measures does).
  Queries in the run but not in the qrels are ignored.
- RR@k is trec_eval's reciprocal rank, 0 when the first relevant document is below rank k.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# Every evaluation reports CIRAL's official measures, nDCG@20 and R@100 (trec_eval -c), next to
# MAP and MRR@10 (RR@10) and the nDCG@10 most other collections quote.
DEFAULT_MEASURES = ("MAP", "nDCG@10", "nDCG@20", "R@1", "R@10", "R@100", "RR@10", "P@10")
_MEASURE = re.compile(r"^(MAP|AP|nDCG|R|P|RR|MRR)(?:@(\d+))?$")
ACCEPTED = "MAP, AP[@k], nDCG[@k], R@k, P@k, RR[@k] or MRR[@k], with k >= 1"


class MeasureError(ValueError):
  """A measure name we cannot compute; the message names it and the accepted ones."""


def parse_measure(name: str) -> tuple[str, int | None]:
  """('AP' | 'nDCG' | 'R' | 'P' | 'RR', cutoff or None) for names like 'nDCG@10', 'MAP'."""
  match = _MEASURE.match(name.strip())
  if not match:
    raise MeasureError(f"unknown measure {name!r}; use {ACCEPTED}")
  kind, cutoff = match.group(1), match.group(2)
  kind = {"MAP": "AP", "MRR": "RR"}.get(kind, kind)
  if kind in ("R", "P") and cutoff is None:
    raise MeasureError(f"measure {name!r} needs a cutoff, e.g. {kind}@10")
  if cutoff is not None and int(cutoff) < 1:  # P@0 would divide by 0: nan
    raise MeasureError(f"measure {name!r}: the cutoff must be at least 1; use {ACCEPTED}")
  return kind, int(cutoff) if cutoff is not None else None


def check_measures(names: Iterable[str]) -> list[str]:
  """`names` as given, once each check passed (`parse_measure`); none at all is an error too.
  For command lines: before any model loads."""
  names = list(names)
  if not names:
    raise MeasureError(f"no measure given; use {ACCEPTED}")
  for name in names:
    parse_measure(name)
  return names


def trec_ranking(scores: Mapping[str, float]) -> list[str]:
  """Document ids in trec_eval's order: score descending, then docid descending."""
  # Two stable sorts: by docid descending, then by score descending.
  by_docid = sorted(scores, key=lambda d: d.encode("utf-8"), reverse=True)
  return sorted(by_docid, key=lambda d: -float(scores[d]))


def _query_measure(kind: str, cutoff: int | None, gains: np.ndarray, judged: Mapping[str, int]
                   ) -> float:
  """`gains`: judgment of each retrieved document in rank order (0 for unjudged)."""
  relevant = gains >= 1
  num_relevant = sum(1 for rel in judged.values() if rel >= 1)
  top = slice(0, cutoff)
  if kind == "AP":
    if num_relevant == 0:
      return 0.0
    ranks = np.flatnonzero(relevant[top]) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / num_relevant)
  if kind == "P":
    return float(np.sum(relevant[top]) / cutoff)
  if kind == "R":
    return float(np.sum(relevant[top]) / num_relevant) if num_relevant else 0.0
  if kind == "RR":
    hits = np.flatnonzero(relevant[top])
    return float(1.0 / (hits[0] + 1)) if len(hits) else 0.0
  if kind == "nDCG":
    positive = np.maximum(gains[top], 0).astype(np.float64)
    dcg = np.sum(positive / np.log2(np.arange(2, len(positive) + 2)))
    ideal_gains = np.sort([g for g in judged.values() if g > 0])[::-1][top].astype(np.float64)
    ideal = np.sum(ideal_gains / np.log2(np.arange(2, len(ideal_gains) + 2)))
    return float(dcg / ideal) if ideal > 0 else 0.0
  raise ValueError(f"unknown measure kind {kind!r}")


def evaluate_per_query(run: Run, qrels: Qrels,
                       measures: Iterable[str] = DEFAULT_MEASURES) -> dict[str, dict[str, float]]:
  """`{measure: {qid: value}}` for every judged query (missing from the run: 0)."""
  parsed = {name: parse_measure(name) for name in measures}
  results: dict[str, dict[str, float]] = {name: {} for name in parsed}
  for qid in sorted(qrels):
    judged = qrels[qid]
    ranking = trec_ranking(run.get(qid, {}))
    gains = np.array([judged.get(doc, 0) for doc in ranking], dtype=np.int64)
    for name, (kind, cutoff) in parsed.items():
      results[name][qid] = _query_measure(kind, cutoff, gains, judged)
  return results


def evaluate(run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES
             ) -> dict[str, float]:
  """Mean of each measure over the judged queries (`trec_eval -c`).

  >>> evaluate({"q1": {"d1": 2.0, "d2": 1.0}}, {"q1": {"d2": 1}}, ["MAP", "RR@10"])
  {'MAP': 0.5, 'RR@10': 0.5}
  """
  per_query = evaluate_per_query(run, qrels, measures)
  return {name: float(np.mean(list(values.values()))) if values else 0.0
          for name, values in per_query.items()}
