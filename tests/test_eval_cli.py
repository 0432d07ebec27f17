"""`eval.py --run --qrels` reproduces ir_measures on a real-looking run."""

import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pytest

from optical_jax.evaluation import write_qrels, write_run

ROOT = Path(__file__).resolve().parents[1]


def test_eval_run_file_matches_ir_measures(tmp_path):
  rng = np.random.default_rng(7)
  run = {f"{q}": {f"doc{d}": float(np.round(rng.normal(), 2)) for d in rng.choice(500, 100,
                                                                                  replace=False)}
         for q in range(30)}
  qrels = {q: {d: 1 for d in list(docs)[:1]} | {f"doc{rng.integers(500)}": 2} for q, docs in
           run.items()}
  run_path, qrels_path = write_run(run, tmp_path / "run"), write_qrels(qrels, tmp_path / "qrels")
  out = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--run", str(run_path), "--qrels",
                        str(qrels_path), "--measures", "MAP,nDCG@10,R@100,P@10"],
                       capture_output=True, text=True, check=True).stdout
  printed = {line.split()[0]: float(line.split()[2]) for line in out.splitlines()
             if line.split()[1:2] == ["all"]}
  expected = ir_measures.calc_aggregate(
      [ir_measures.AP, ir_measures.nDCG @ 10, ir_measures.R @ 100, ir_measures.P @ 10],
      ir_measures.read_trec_qrels(str(qrels_path)), ir_measures.read_trec_run(str(run_path)))
  assert printed["MAP"] == pytest.approx(expected[ir_measures.AP], abs=1e-4)
  assert printed["nDCG@10"] == pytest.approx(expected[ir_measures.nDCG @ 10], abs=1e-4)
  assert printed["R@100"] == pytest.approx(expected[ir_measures.R @ 100], abs=1e-4)
  assert printed["P@10"] == pytest.approx(expected[ir_measures.P @ 10], abs=1e-4)


def test_eval_names_the_bad_line(tmp_path):
  (tmp_path / "run").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2\n")
  (tmp_path / "qrels").write_text("q1 0 d1 1\n")
  result = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--run", str(tmp_path / "run"),
                           "--qrels", str(tmp_path / "qrels")], capture_output=True, text=True)
  assert result.returncode != 0 and "run:2: expected 6 columns" in result.stderr
