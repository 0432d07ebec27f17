"""Every measure against ir_measures (pytrec_eval, i.e. trec_eval) on adversarial runs."""

import re

import ir_measures
import numpy as np
import pytest

from optical_jax.evaluation import DEFAULT_MEASURES, evaluate, evaluate_per_query, trec_ranking


def random_run_and_qrels(seed: int, num_queries: int = 40, num_docs: int = 60):
  rng = np.random.default_rng(seed)
  run, qrels = {}, {}
  for q in range(num_queries):
    qid = f"q{q}"
    retrieved = rng.choice(num_docs, size=rng.integers(1, 40), replace=False)
    # Coarse scores make many ties, which trec_eval breaks by docid.
    run[qid] = {f"d{d}": float(rng.integers(0, 5)) for d in retrieved}
    judged = rng.choice(num_docs, size=rng.integers(0, 12), replace=False)
    grades = rng.choice([0, 0, 1, 2, 3], size=len(judged))
    if q % 7 == 0:
      grades[:] = 0  # judged but nothing relevant
    qrels[qid] = {f"d{d}": int(g) for d, g in zip(judged, grades)}
  run["only_in_run"] = {"d1": 1.0}
  qrels["only_in_qrels"] = {"d1": 1}
  return run, qrels


MEASURES = {"MAP": ir_measures.AP, "nDCG@10": ir_measures.nDCG @ 10,
            "nDCG@20": ir_measures.nDCG @ 20, "nDCG": ir_measures.nDCG,
            "R@1": ir_measures.R @ 1, "R@10": ir_measures.R @ 10, "R@100": ir_measures.R @ 100,
            "P@5": ir_measures.P @ 5, "P@10": ir_measures.P @ 10, "RR": ir_measures.RR}


def trec_eval_rr_at(k, run, qrels):
  """RR@k from trec_eval's own RR (through pytrec_eval): ir_measures' RR@k provider (the MS
  MARCO script) breaks score ties differently from trec_eval."""
  values = [m.value for m in ir_measures.iter_calc([ir_measures.RR], qrels, run)]
  return np.mean([v if v >= 1 / k else 0.0 for v in values])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_measure_matches_ir_measures(seed):
  run, qrels = random_run_and_qrels(seed)
  ours = evaluate(run, qrels, list(MEASURES))
  theirs = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
  for name, measure in MEASURES.items():
    assert ours[name] == pytest.approx(theirs[measure], abs=1e-6), name
  for k in (1, 3, 10):
    assert evaluate(run, qrels, [f"RR@{k}"])[f"RR@{k}"] == pytest.approx(
        trec_eval_rr_at(k, run, qrels), abs=1e-6)


def test_per_query_values_match_ir_measures():
  run, qrels = random_run_and_qrels(3)
  ours = evaluate_per_query(run, qrels, ["MAP", "nDCG@10"])
  for metric in ir_measures.iter_calc([ir_measures.AP, ir_measures.nDCG @ 10], qrels, run):
    name = "MAP" if metric.measure == ir_measures.AP else "nDCG@10"
    assert ours[name][metric.query_id] == pytest.approx(metric.value, abs=1e-6)


def test_ties_are_broken_by_descending_docid_like_trec_eval():
  assert trec_ranking({"a": 1.0, "c": 1.0, "b": 2.0, "d": 0.5}) == ["b", "c", "a", "d"]
  # The relevant document "a" loses the tie to "c": rank 2, AP 0.5.
  assert evaluate({"q": {"a": 1.0, "c": 1.0}}, {"q": {"a": 1}}, ["MAP"]) == {"MAP": 0.5}


def test_hand_computed_values():
  run = {"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6}}
  qrels = {"q": {"d2": 1, "d4": 2, "d9": 1}}  # d9 is never retrieved
  values = evaluate(run, qrels, ["MAP", "RR@10", "P@2", "R@2"])
  assert values["MAP"] == pytest.approx((1 / 2 + 2 / 4) / 3)
  assert values["RR@10"] == 0.5 and values["P@2"] == 0.5 and values["R@2"] == pytest.approx(1 / 3)


def test_unknown_measure_is_rejected():
  with pytest.raises(ValueError, match="unknown measure 'MAPP'"):
    evaluate({}, {}, ["MAPP"])
  with pytest.raises(ValueError, match="needs a cutoff"):
    evaluate({}, {}, ["R"])


def test_default_measures_include_ciral_official_ones_and_match_ir_measures():
  run, qrels = random_run_and_qrels(4)
  ours = evaluate(run, qrels)  # DEFAULT_MEASURES
  assert {"MAP", "RR@10", "nDCG@20", "R@100"} <= set(ours)
  theirs = ir_measures.calc_aggregate([ir_measures.AP, ir_measures.nDCG @ 20,
                                       ir_measures.R @ 100], qrels, run)
  assert ours["MAP"] == pytest.approx(theirs[ir_measures.AP], abs=1e-6)
  assert ours["nDCG@20"] == pytest.approx(theirs[ir_measures.nDCG @ 20], abs=1e-6)
  assert ours["R@100"] == pytest.approx(theirs[ir_measures.R @ 100], abs=1e-6)
  assert ours["RR@10"] == pytest.approx(trec_eval_rr_at(10, run, qrels), abs=1e-6)
  # nDCG@20 is its own cutoff, not nDCG@10 again: some query has relevant documents 11-20.
  assert ours["nDCG@20"] != ours["nDCG@10"]
  assert list(DEFAULT_MEASURES) == list(ours)


@pytest.mark.parametrize("name", ["P@0", "R@0", "nDCG@0", "RR@0", "MAP@0"])
def test_a_zero_cutoff_is_rejected_not_nan(name):
  from optical_jax.evaluation.metrics import MeasureError
  with pytest.raises(MeasureError, match=rf"measure '{re.escape(name)}': the cutoff must be at "
                                         r"least 1; use MAP, AP\[@k\], nDCG\[@k\]"):
    evaluate({"q1": {"d1": 1.0}}, {"q1": {"d1": 1}}, [name])


def test_check_measures_names_the_bad_one_and_the_accepted_ones():
  from optical_jax.evaluation.metrics import MeasureError, check_measures
  assert check_measures(["MAP", "nDCG@20", "MRR@10", "RR"]) == ["MAP", "nDCG@20", "MRR@10", "RR"]
  with pytest.raises(MeasureError, match=r"unknown measure 'foo'; use MAP, AP\[@k\], nDCG\[@k\], "
                                         r"R@k, P@k, RR\[@k\] or MRR\[@k\], with k >= 1"):
    check_measures(["MAP", "foo"])
  with pytest.raises(MeasureError, match="no measure given"):
    check_measures([])
