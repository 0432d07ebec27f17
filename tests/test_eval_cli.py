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


def eval_py(run_path, qrels_path, *flags):
  return subprocess.run([sys.executable, str(ROOT / "eval.py"), "--run", str(run_path), "--qrels",
                         str(qrels_path), *flags], capture_output=True, text=True, check=True)


def all_values(stdout):
  return {line.split()[0]: float(line.split()[2]) for line in stdout.splitlines()
          if line.split()[1:2] == ["all"]}


def test_eval_reports_ciral_measures_by_default(tmp_path):
  rng = np.random.default_rng(3)
  run = {f"q{q}": {f"d{d}": float(rng.normal()) for d in rng.choice(200, 120, replace=False)}
         for q in range(8)}
  qrels = {q: {d: int(rng.integers(1, 3)) for d in rng.choice(list(docs), 6, replace=False)}
           for q, docs in run.items()}
  run_path, qrels_path = write_run(run, tmp_path / "run"), write_qrels(qrels, tmp_path / "qrels")
  printed = all_values(eval_py(run_path, qrels_path).stdout)
  expected = ir_measures.calc_aggregate(
      [ir_measures.AP, ir_measures.nDCG @ 20, ir_measures.R @ 100],
      ir_measures.read_trec_qrels(str(qrels_path)), ir_measures.read_trec_run(str(run_path)))
  assert {"MAP", "RR@10", "nDCG@20", "R@100"} <= set(printed)
  assert printed["MAP"] == pytest.approx(expected[ir_measures.AP], abs=1e-4)
  assert printed["nDCG@20"] == pytest.approx(expected[ir_measures.nDCG @ 20], abs=1e-4)
  assert printed["R@100"] == pytest.approx(expected[ir_measures.R @ 100], abs=1e-4)


@pytest.mark.parametrize("bom_in", ["run", "qrels"])
def test_eval_with_a_bom_prints_the_bom_free_scores(tmp_path, bom_in):
  run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d4": 2.0, "d5": 1.0}}
  qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d5": 1}}
  run_path, qrels_path = write_run(run, tmp_path / "run"), write_qrels(qrels, tmp_path / "qrels")
  plain = all_values(eval_py(run_path, qrels_path, "--measures", "MAP,RR@10").stdout)
  bom_path = run_path if bom_in == "run" else qrels_path
  bom_path.write_bytes("\ufeff".encode() + bom_path.read_bytes())
  result = eval_py(run_path, qrels_path, "--measures", "MAP,RR@10")
  assert all_values(result.stdout) == plain
  expected = ir_measures.calc_aggregate([ir_measures.AP], qrels, run)[ir_measures.AP]
  assert plain["MAP"] == pytest.approx(expected, abs=1e-4)
  assert "judged queries in the run: 2 of 2" in result.stderr


def test_eval_says_how_many_judged_queries_the_run_covers(tmp_path):
  run = {q: {"d1": 1.0} for q in ("q1", "q2", "q3", "unjudged")}
  qrels = {q: {"d1": 1} for q in ("q1", "q2", "q3", "q4", "q5")}
  result = eval_py(write_run(run, tmp_path / "run"), write_qrels(qrels, tmp_path / "qrels"))
  assert "judged queries in the run: 3 of 5" in result.stderr
  assert "warning" not in result.stderr
  assert all_values(result.stdout)["MAP"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("run_text,qrels_text,warning", [
    ("Q1 Q0 d1 1 0.5 t\n", "q1 0 d1 1\n", "no query of the run is judged (run queries: 'Q1'"),
    ("", "q1 0 d1 1\n", "has no results"),
    ("q1 Q0 d1 1 0.5 t\n", "\n", "judge no query"),
])
def test_eval_warns_when_every_measure_must_be_zero(tmp_path, run_text, qrels_text, warning):
  (tmp_path / "run").write_text(run_text)
  (tmp_path / "qrels").write_text(qrels_text)
  result = eval_py(tmp_path / "run", tmp_path / "qrels")
  assert warning in result.stderr
  assert set(all_values(result.stdout).values()) == {0.0}


def test_eval_of_the_final_checkpoint_reuses_the_training_runs_embeddings(tmp_path):
  from tests.helpers import save_tiny_bert
  from tests.training.runs import SENTENCES, run_train, toy_collection, write_config
  checkpoint = save_tiny_bert(tmp_path / "tiny_bert", seed=1)
  bitext = tmp_path / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in SENTENCES * 8))
  # The student encodes the corpus: its final step's embeddings are the ones to keep.
  collection = dict(toy_collection(tmp_path), query_encoder="teacher", doc_encoder="student")
  config = write_config(tmp_path / "config.py", checkpoint, bitext,
                        **{"eval.collections": [collection]})
  workdir = tmp_path / "run"
  run_train(config, workdir)
  cache = tmp_path / "cache" / "embeddings"
  written = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
  assert len(written) == 4  # queries (teacher) and corpus (student): vectors and row order
  trained = (workdir / "runs" / "toy.trec").read_bytes()
  result = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                           f"--checkpoint={workdir}"], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # Nothing was encoded again (a new key would have written new files) and the run is the same.
  assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == written
  assert (workdir / "runs" / "toy.trec").read_bytes() == trained
