"""`eval.py --run --qrels` reproduces ir_measures on a real-looking run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pytest

from optical_jax.evaluation import write_qrels, write_run
from optical_jax.evaluation.collections import read_results, results_dir
from optical_jax.evaluation.metrics import DEFAULT_MEASURES

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_of_the_final_checkpoint_reuses_the_training_runs_embeddings(tmp_path):
  from tests.helpers import save_tiny_bert
  from tests.training.runs import SENTENCES, train_here, toy_collection, write_config
  checkpoint = save_tiny_bert(tmp_path / "tiny_bert", seed=1)
  bitext = tmp_path / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in SENTENCES * 8))
  # The student encodes the corpus: its final step's embeddings are the ones to keep.
  collection = dict(toy_collection(tmp_path), query_encoder="teacher", doc_encoder="student")
  config = write_config(tmp_path / "config.py", checkpoint, bitext,
                        **{"eval.collections": [collection]})
  workdir = tmp_path / "run"
  train_here(config, workdir)
  cache = tmp_path / "cache" / "embeddings"
  written = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
  assert len(written) == 4  # queries (teacher) and corpus (student): vectors and row order
  run_file = results_dir(workdir, 3) / "runs" / "toy.trec"  # the final step's
  trained = run_file.read_bytes()
  result = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                           f"--checkpoint={workdir}"], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # Nothing was encoded again (a new key would have written new files) and the run is the same.
  assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == written
  assert run_file.read_bytes() == trained


@pytest.mark.slow
def test_eval_refuses_a_run_with_a_nan_score_naming_its_line(tmp_path):
  # trec_eval ranks NaN scores its own way (MAP 0.0516 where ours gave 0.0430): no number.
  (tmp_path / "run").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 nan t\nq1 Q0 d3 3 0.1 t\n")
  (tmp_path / "qrels").write_text("q1 0 d2 1\n")
  result = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--run", str(tmp_path / "run"),
                           "--qrels", str(tmp_path / "qrels")], capture_output=True, text=True)
  assert result.returncode == 1, result.stderr
  assert f"error: {tmp_path / 'run'}:2: score 'nan' of document 'd2'" in result.stderr
  assert "Traceback" not in result.stderr and "MAP" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("measures, bad", [("MAP,foo", "unknown measure 'foo'"),
                                           ("P@0", "measure 'P@0': the cutoff must be at least 1")])
def test_a_bad_measure_is_one_line_before_any_work(tmp_path, measures, bad):
  (tmp_path / "run").write_text("q1 Q0 d1 1 0.5 t\n")
  (tmp_path / "qrels").write_text("q1 0 d1 1\n")
  config = tmp_path / "config.py"
  config.write_text("from optical_jax.config import base_config\n\ndef get_config():\n"
                    "  c = base_config()\n  c.model.teacher = '/nonexistent/teacher'\n  return c\n")
  for mode in (["--run", str(tmp_path / "run"), "--qrels", str(tmp_path / "qrels")],
               [f"--config={config}", f"--checkpoint={tmp_path / 'W'}"]):
    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), *mode, "--measures",
                             measures], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    # Named before the (missing) teacher loads; the accepted measures with it.
    assert result.stderr.startswith(f"error: --measures: {bad}"), result.stderr
    assert "use MAP, AP[@k], nDCG[@k], R@k, P@k, RR[@k] or MRR[@k]" in result.stderr
    assert "Traceback" not in result.stderr and "nan" not in result.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A run trained with its own one-layer student (the teacher has two layers), and the same
  config without `model.student`, as a user who forgot the run's override writes it."""
  from types import SimpleNamespace
  from tests.helpers import save_tiny_bert
  from tests.training.runs import SENTENCES, train_here, toy_collection, write_config
  root = tmp_path_factory.mktemp("trained_run")
  teacher = save_tiny_bert(root / "teacher", seed=1)
  student = save_tiny_bert(root / "student", seed=2, layers=1)
  bitext = root / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in SENTENCES * 8))
  collection = toy_collection(root)
  config = write_config(root / "config.py", teacher, bitext, num_train_steps=2,
                        **{"model.student": str(student), "eval.collections": [collection]})
  forgetful = write_config(root / "forgetful.py", teacher, bitext,
                           **{"eval.collections": [collection]})
  workdir = root / "run"
  train_here(config, workdir)
  return SimpleNamespace(root=root, teacher=teacher, student=student, config=config,
                         forgetful=forgetful, workdir=workdir)


def eval_checkpoint(config, workdir, *flags):
  return subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                         f"--checkpoint={workdir}", *flags], capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                              JAX_PLATFORMS="cpu"))


@pytest.mark.slow
def test_eval_with_a_config_missing_the_runs_model_fields_takes_them_and_says_so(trained_run):
  run_file = results_dir(trained_run.workdir, 2) / "runs" / "toy.trec"
  trained = run_file.read_bytes()  # the training run's final evaluation
  result = eval_checkpoint(trained_run.forgetful, trained_run.workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"{trained_run.workdir / 'config.json'}: evaluating the model as trained, with "
          f"config.model.student={str(trained_run.student)!r} (the config has '')"
          ) in result.stderr
  assert "Traceback" not in result.stderr
  assert run_file.read_bytes() == trained  # the trained student, not a shape error


@pytest.mark.slow
@pytest.mark.parametrize("where, what", [
    ("teacher", "is the teacher's checkpoint (config.model.teacher)"),
    ("student", "is the student's checkpoint (config.model.student)"),
    ("workdir", "is the run's workdir"),
    ("root", "holds the teacher's checkpoint (config.model.teacher)")])
def test_export_into_a_directory_a_model_loads_from_is_refused(trained_run, where, what):
  target = {"teacher": trained_run.teacher, "student": trained_run.student,
            "workdir": trained_run.workdir, "root": trained_run.root}[where]
  files = lambda: {p: p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()
                   and "cache" not in p.parts}
  before = files()
  result = eval_checkpoint(trained_run.config, trained_run.workdir, f"--export_hf={target}",
                           "--overwrite")
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.startswith(f"error: --export_hf {target}: {what}, "), result.stderr
  assert "which an export must never replace; give another directory" in result.stderr
  assert "Traceback" not in result.stderr
  assert files() == before


@pytest.mark.slow
def test_export_overwrites_only_an_earlier_export_and_is_exactly_the_trained_student(
    trained_run, tmp_path):
  from sentence_transformers import SentenceTransformer
  from optical_jax.evaluation.retrieval import TextEncoder
  from optical_jax.models.export import MARKER
  from optical_jax.models.student import build_models
  from optical_jax.training.checkpoints import restore_params
  from optical_jax.runtime.mesh import data_mesh
  from tests.helpers import load_config
  from tests.models.test_export import TEXTS, stale_sentence_transformers_model
  other = stale_sentence_transformers_model(tmp_path / "other")
  refused = eval_checkpoint(trained_run.config, trained_run.workdir, f"--export_hf={other}",
                            "--overwrite")
  assert refused.returncode == 1, refused.stderr
  assert refused.stderr.startswith(f"error: --export_hf {other}: holds no earlier export of "
                                   "optical_jax"), refused.stderr
  assert "Traceback" not in refused.stderr and (other / "modules.json").is_file()
  target = tmp_path / "export"
  for extra in ((), ("--overwrite",)):  # a new export, then over it
    result = eval_checkpoint(trained_run.config, trained_run.workdir, f"--export_hf={target}",
                             *extra)
    assert result.returncode == 0, result.stderr[-3000:]
  # Our own embeddings of the trained student, from the config and the checkpoint.
  config = load_config(trained_run.config)
  models = build_models(config)
  params, step, which = restore_params(trained_run.workdir)
  assert json.loads((target / MARKER).read_text())["source"] == {
      "workdir": str(trained_run.workdir), "step": step, "checkpoint": which}
  ours = TextEncoder(models.student, data_mesh(), max_length=config.eval.max_length).bind(
      params["encoder"]).encode(TEXTS, progress=False)
  theirs = SentenceTransformer(str(target), device="cpu").encode(TEXTS, convert_to_numpy=True)
  np.testing.assert_allclose(theirs, ours, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("progress_bar", [True, False])
def test_eval_shows_the_passage_bar_only_with_runtime_progress_bar(trained_run, tmp_path,
                                                                   progress_bar):
  result = eval_checkpoint(trained_run.config, trained_run.workdir,
                           f"--config.runtime.cache_dir={tmp_path / 'cache'}",  # encoded anew
                           f"--config.runtime.progress_bar={progress_bar}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("passages:" in result.stderr) == progress_bar, result.stderr[-3000:]


@pytest.mark.slow
def test_ctrl_c_during_eval_stops_with_130_and_says_what_is_kept(trained_run, tmp_path):
  import signal
  eval_json = results_dir(trained_run.workdir, 2) / "eval.json"
  before = eval_json.read_bytes()
  process = subprocess.Popen(
      [sys.executable, str(ROOT / "eval.py"), f"--config={trained_run.config}",
       f"--checkpoint={trained_run.workdir}",
       f"--config.runtime.cache_dir={tmp_path / 'cache'}"],  # encoded anew: seconds to interrupt
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
  line = process.stdout.readline()  # "WORKDIR: step N (which)": the evaluation begins
  assert ": step " in line, line
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 130, err[-3000:]
  assert err.strip().splitlines()[-1].startswith(
      f"interrupted; {trained_run.workdir}'s checkpoints are untouched and "
      f"{results_dir(trained_run.workdir, 2)} holds the last complete evaluation of that step"
  ), err
  assert "Traceback" not in err and "Exception ignored" not in err
  assert eval_json.read_bytes() == before


@pytest.mark.slow
def test_eval_takes_the_runs_vocabulary_extension_and_what_built_it_not_its_dtype(tmp_path):
  from tests.helpers import load_config, save_tiny_bert
  from tests.training.runs import write_config
  teacher = save_tiny_bert(tmp_path / "teacher")
  bitext = tmp_path / "bitext.tsv"
  bitext.write_text("Yesu analira.\tJesus wept.\n")
  given = write_config(tmp_path / "config.py", teacher, "")  # without the run's overrides
  run = load_config(write_config(tmp_path / "run.py", teacher, bitext, **{
      "model.vocab_extension": 2000, "model.vocab_init": "ot_plan", "data.alignment_pairs": 64,
      "model.dtype": "bfloat16"}))
  workdir = tmp_path / "W"
  workdir.mkdir()
  (workdir / "config.json").write_text(run.to_json_best_effort(indent=2))
  (tmp_path / "occupied").mkdir()
  (tmp_path / "occupied" / "x").write_text("")  # stops the command before any model loads
  result = eval_checkpoint(given, workdir, f"--export_hf={tmp_path / 'occupied'}")
  assert result.returncode == 1, result.stderr[-3000:]
  said = result.stderr.splitlines()[0]
  assert said.startswith(f"{workdir / 'config.json'}: evaluating the model as trained, with "
                         "config.model.vocab_extension=2000 (the config has 0), "
                         "config.model.vocab_init='ot_plan' (the config has 'mean_of_pieces')"), said
  assert f"config.data.train_file={str(bitext)!r} (the config has '')" in said
  assert "config.data.alignment_pairs=64" in said
  assert "dtype" not in said  # how the model computes stays the config's choice


@pytest.mark.slow
def test_eval_of_an_earlier_step_records_what_it_evaluated_and_keeps_the_final_results(
    trained_run):
  import hashlib
  workdir = trained_run.workdir
  final = results_dir(workdir, 2)
  kept = lambda: {p: p.read_bytes() for p in sorted(final.rglob("*")) if p.is_file()}
  before = kept()
  assert read_results(workdir, 2)["step"] == 2
  result = eval_checkpoint(trained_run.config, workdir, "--step=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert kept() == before  # the final step's results stay as they were
  record = read_results(workdir, 1)
  assert (record["step"], record["which"]) == (1, "step")
  assert record["checkpoint"] == str(workdir / "checkpoints" / "1")
  assert record["measures"] == list(DEFAULT_MEASURES)
  assert 0 <= record["results"]["toy"]["MAP"] <= 1
  for field in ("topics", "corpus", "qrels"):
    path = record["collections"]["toy"][field]["path"]
    assert record["collections"]["toy"][field]["sha256"] == hashlib.sha256(
        Path(path).read_bytes()).hexdigest()
  assert record["config"]["model"]["student"] == str(trained_run.student)
  assert (results_dir(workdir, 1) / "runs" / "toy.trec").is_file()
  assert (f"step 1 (step): wrote {results_dir(workdir, 1)} (eval.json, eval_per_query.json, "
          "runs/toy.trec)") in result.stdout
  assert read_results(workdir)["step"] == 2  # the latest step evaluated


@pytest.mark.slow
def test_eval_refuses_a_workdir_another_run_holds_and_writes_nothing(trained_run):
  from optical_jax.runtime.lock import workdir_lock
  workdir = trained_run.workdir
  written = {p: p.stat().st_mtime_ns for p in (workdir / "eval").rglob("*")}
  with workdir_lock(workdir):  # a training run in progress
    result = eval_checkpoint(trained_run.config, workdir, "--step=latest")
  assert result.returncode == 1, result.stderr[-3000:]
  assert f"error: {workdir} is in use by another run" in result.stderr
  assert "Traceback" not in result.stderr
  assert {p: p.stat().st_mtime_ns for p in (workdir / "eval").rglob("*")} == written


@pytest.mark.slow
def test_eval_of_a_copied_workdir_loads_the_hub_commit_its_run_recorded(tmp_path):
  # The hub's layout in a local cache (offline): the teacher's default branch moves to another
  # commit after the run; the copied workdir is evaluated with the run's.
  import json
  import shutil
  from tests.helpers import save_tiny_bert
  from tests.training.runs import SENTENCES, run_train, toy_collection, write_config
  cache, trained_at, later = tmp_path / "hf", "1" * 40, "2" * 40
  repo = cache / "models--org--teacher"
  save_tiny_bert(repo / "snapshots" / trained_at, seed=1)
  save_tiny_bert(repo / "snapshots" / later, seed=5)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(trained_at)
  bitext = tmp_path / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in SENTENCES * 4))
  config = write_config(tmp_path / "config.py", "org/teacher", bitext, num_train_steps=1,
                        **{"eval.collections": [toy_collection(tmp_path)]})
  env = {"HF_HUB_CACHE": str(cache)}
  workdir = tmp_path / "W"
  run_train(config, workdir, env=env)
  assert json.loads((workdir / "config.json").read_text())["model"]["teacher_revision"] == \
      trained_at
  (repo / "refs" / "main").write_text(later)  # the hub moved on
  copy = tmp_path / "elsewhere" / "W"
  shutil.copytree(workdir, copy)
  shutil.rmtree(workdir)
  run_file = lambda w: (results_dir(w, 1) / "runs" / "toy.trec").read_bytes()
  trained = run_file(copy)
  (results_dir(copy, 1) / "runs" / "toy.trec").unlink()
  result = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                           f"--checkpoint={copy}"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", **env))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "teacher_revision" not in result.stderr  # the same teacher: its commit, silently
  assert run_file(copy) == trained  # the teacher of the run's commit, not the new one
  assert read_results(copy, 1)["config"]["model"]["teacher_revision"] == trained_at
