"""The demo's orchestration on a tiny teacher: its table, its gains and its dev MAP plot; the
seed study continues the same workdir (seed 0's rows are resumed, not retrained)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from optical_jax.evaluation.collections import results_dir
from tests.helpers import ROOT, load_config, save_tiny_bert


def demo_config(tmp_path: Path):
  config = load_config(ROOT / "configs" / "demo.py")
  teacher = tmp_path / "tiny_bert"
  # Saved once: a rewritten checkpoint would be a new teacher to the adaptation cache.
  config.model.teacher = str(teacher if teacher.is_dir() else save_tiny_bert(teacher, seed=1))
  config.runtime.cache_dir = str(tmp_path / "cache")
  config.runtime.compilation_cache = False
  config.train.num_train_steps, config.train.warmup_steps = 2, 1
  config.train.eval_every_steps, config.train.checkpoint_every_steps = 1, 2
  config.data.max_length, config.eval.max_length = 16, 32
  config.runtime.progress_bar = False
  # The demo's student built for the language, at a tiny size.
  config.model.vocab_extension, config.data.alignment_pairs = 32, 64
  return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """The demo with one seed: (its tmp directory, workdir, returned rows, results.md)."""
  from optical_jax.experiments.demo import run_demo
  tmp_path = tmp_path_factory.mktemp("demo")
  workdir = tmp_path / "demo"
  rows = run_demo(demo_config(tmp_path), workdir)
  return tmp_path, workdir, rows, (workdir / "results.md").read_text()


LOSSES = ["ot", "mse", "contrastive", "ot+contrastive"]
UPPER = "en→en upper bound (teacher, English queries and passages)"


# Each table's test collection, the start of its title and its zero-shot row.
TABLES = {"test-ny-en": ("ny→en: ", "zero-shot (teacher, Chichewa queries)"),
          "test-en-ny": ("en→ny: ", "zero-shot (teacher, Chichewa passages)"),
          "test-ny-en-context": ("ny→en, context: ", "zero-shot (teacher, Chichewa queries)"),
          "test-en-ny-context": ("en→ny, context: ", "zero-shot (teacher, Chichewa passages)")}


def sections(text: str) -> dict[str, str]:
  """results.md's text per table, by its test collection."""
  starts = {test: text.index(f"\n{title}") for test, (title, _) in TABLES.items()}
  order = sorted(starts, key=starts.get)
  ends = [starts[test] for test in order[1:]] + [len(text)]
  return {test: text[starts[test]:end] for test, end in zip(order, ends)}


@pytest.mark.slow
def test_demo_prints_both_directions_teacher_rows_one_row_per_loss_gains_and_a_plot(demo_run):
  _, workdir, tables, text = demo_run
  assert list(tables) == list(TABLES)
  for test, (_, zero_shot_row) in TABLES.items():
    rows = tables[test]
    assert list(rows) == [UPPER, zero_shot_row,
                          *[f"{loss} distillation (2 steps)" for loss in LOSSES]]
    check_table(rows, sections(text)[test], zero_shot_row)
  # One upper bound serves both directions of a collection; the students differ by direction,
  # and the context collections' rows are their own.
  ot = "ot distillation (2 steps)"
  for ny_en, en_ny in (("test-ny-en", "test-en-ny"),
                       ("test-ny-en-context", "test-en-ny-context")):
    assert tables[ny_en][UPPER] == tables[en_ny][UPPER]
    assert tables[ny_en][ot] != tables[en_ny][ot]
  assert tables["test-en-ny"][UPPER] != tables["test-en-ny-context"][UPPER]
  assert tables["test-en-ny"][ot] != tables["test-en-ny-context"][ot]
  assert (workdir / "dev_map.png").stat().st_size > 10_000

  def dev_steps(loss):
    records = (workdir / loss.replace("+", "_") / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, records) if "dev_MAP" in r]
  # Every student starts as the teacher: only the first run evaluates step 0.
  assert dev_steps("ot") == [0, 1, 2]
  assert dev_steps("mse") == dev_steps("ot+contrastive") == [1, 2]


def check_table(rows: dict, text: str, zero_shot_row: str) -> None:
  zero_shot = rows[zero_shot_row]["MAP"]
  for loss in LOSSES:
    line = next(l for l in text.splitlines() if l.startswith(f"| {loss} distillation"))
    gain, low, high = map(float, re.search(
        r"([+-]\d\.\d+) \[([+-]\d\.\d+), ([+-]\d\.\d+)\]", line).groups())
    # The paired bootstrap is centred on the exact difference of the two MAPs.
    assert abs(gain - (rows[f"{loss} distillation (2 steps)"]["MAP"] - zero_shot)) < 2e-4
    assert low <= gain <= high
  # MaxSim reranks the dense top 100 of every row, teacher rows included.
  from optical_jax.experiments.demo import MAXSIM
  for name, values in rows.items():
    assert 0.0 < values[MAXSIM] <= 1.0, name

  # OT's share on top of contrastive learning, and OT against MSE: paired, centred on the
  # difference of the two rows' MAPs.
  for label, system, baseline in (("OT's own share", "ot+contrastive", "contrastive"),
                                  ("OT vs MSE", "ot", "mse"),
                                  ("OT vs contrastive", "ot", "contrastive")):
    line = next(l for l in text.splitlines() if l.startswith(f"{label}: {system} − {baseline} = "))
    gain, low, high = map(float, re.search(
        r"= ([+-]\d\.\d+) \[([+-]\d\.\d+), ([+-]\d\.\d+)\]$", line).groups())
    difference = (rows[f"{system} distillation (2 steps)"]["MAP"]
                  - rows[f"{baseline} distillation (2 steps)"]["MAP"])
    assert abs(gain - difference) < 2e-4 and low <= gain <= high
    # The same comparison under MaxSim, paired over queries as well.
    maxsim = (rows[f"{system} distillation (2 steps)"][MAXSIM]
              - rows[f"{baseline} distillation (2 steps)"][MAXSIM])
    line = next(l for l in text.splitlines()
                if l.startswith(f"{label}, MaxSim: {system} − {baseline} = "))
    gain = float(re.search(r"= ([+-]\d\.\d+) \[", line).group(1))
    assert abs(gain - maxsim) < 2e-4


@pytest.mark.slow
def test_demo_seed_study_reports_each_seed_and_the_pooled_share(demo_run, capsys):
  from optical_jax.experiments.demo import run_demo
  tmp_path, workdir, _, _ = demo_run
  config = demo_config(tmp_path)
  config.demo.losses = ("contrastive", "ot+contrastive")
  config.demo.seeds = (0, 1)
  capsys.readouterr()
  run_demo(config, workdir)
  # Seed 0's rows come from the first run: resumed at their last step, not trained again.
  assert capsys.readouterr().out.count("resumed from step 2 ") == 2
  for section in sections((workdir / "results.md").read_text()).values():
    check_seed_tables(section)
  # Seed 0 keeps the usual directory; the other seeds get their own.
  assert (results_dir(workdir / "contrastive", 2) / "eval.json").is_file()
  assert (results_dir(workdir / "ot_contrastive-seed1", 2) / "eval.json").is_file()
  # A different seed trains on different batches.
  losses = [[json.loads(l)["loss"] for l in (workdir / d / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)] for d in ("contrastive", "contrastive-seed1")]
  assert losses[0] != losses[1]


def check_seed_tables(text: str) -> None:
  dense, maxsim = text.split("\nTraining seeds 0, 1:\n")[1].split("MaxSim MAP:")
  for section in (dense, maxsim):
    seed_rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines()
                 if line.startswith(("| contrastive |", "| ot+contrastive |"))}
    assert set(seed_rows) == {"contrastive", "ot+contrastive"}
    for loss, line in seed_rows.items():
      seed0, seed1, mean, sd = map(float, line.strip("| ").split(" | ")[1:])
      # Two seeds: the sample standard deviation is |a − b| / √2.
      assert abs(mean - (seed0 + seed1) / 2) < 1e-4
      assert abs(sd - abs(seed0 - seed1) / 2 ** 0.5) < 2e-4
  # The dense table's seed 0 is the main table's row; the MaxSim table's is its MaxSim column.
  main = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()
          if line.startswith("| contrastive distillation")}
  row = main["contrastive distillation (2 steps)"]
  first = lambda section: next(l for l in section.splitlines()
                               if l.startswith("| contrastive |")).split(" | ")[1]
  assert first(dense) == row[1] and first(maxsim) == row[5]
  for label in ("seed 0", "seed 1", "2 seeds pooled"):
    assert any(l.startswith(f"OT's own share, {label}: ") for l in dense.splitlines()), label
    assert any(l.startswith(f"OT's own share, MaxSim, {label}: ")
               for l in maxsim.splitlines()), label


def test_the_demo_reads_none_of_its_own_output_files():
  """It composes what training returns (RunResult), not run files, metrics or JSON it wrote."""
  import ast
  tree = ast.parse((ROOT / "optical_jax" / "experiments" / "demo.py").read_text())
  called = {node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))}
  readers = {"open", "read_text", "read_bytes", "read_run", "read_topics", "read_qrels",
             "read_corpus", "load", "loads", "restore_params", "build_models"}
  assert "train_and_evaluate" in called and not called & readers, called & readers


@pytest.mark.slow
def test_the_demo_says_where_its_time_went(demo_run):
  _, _, _, text = demo_run
  table = text.split("Where the time went (s):\n\n")[1].splitlines()
  assert table[0] == "| part | set-up | steps | dev evaluation | final evaluation | total |"
  parts = [line.split(" | ")[0].strip("| ") for line in table[2:]]
  assert parts == ["inputs and the teacher's rows", "ot, seed 0", "mse, seed 0",
                   "contrastive, seed 0", "ot+contrastive, seed 0"]
  for line in table[2:]:
    values = [float(v) for v in line.strip("| ").split(" | ")[1:]]
    assert all(v >= 0 for v in values) and abs(sum(values[:-1]) - values[-1]) < 0.2


@pytest.mark.slow
def test_a_later_demo_reads_the_teachers_rows_and_a_changed_input_evaluates_again(
    demo_run, monkeypatch):
  from optical_jax.data.inputs import resolve_inputs
  from optical_jax.experiments import demo
  tmp_path, _, tables, _ = demo_run
  config = resolve_inputs(demo_config(tmp_path)).config

  def no_evaluation(*args, **kwargs):
    raise AssertionError("the teacher was evaluated again")

  monkeypatch.setattr(demo, "Evaluator", no_evaluation)
  rows = demo.reference_rows(config)  # from runtime.cache_dir/reference_rows alone
  upper = rows["test-en-en"]
  assert upper.system == UPPER
  assert {m: upper.values[m] for m in demo.TABLE_MEASURES} == {
      m: tables["test-ny-en"][UPPER][m] for m in demo.TABLE_MEASURES}
  assert np.mean(list(upper.maxsim.values())) == tables["test-ny-en"][UPPER][demo.MAXSIM]
  # An entry that is not one the demo wrote (cut short, other fields) is evaluated again.
  kept = demo.TeacherRows(config, demo.load_encoder(config.model.teacher))
  path = kept._path(config.demo.reference_collections[0])
  good = path.read_text()
  for bad in (good[:10], '{"values": {}}'):
    path.write_text(bad)
    assert kept.get(config.demo.reference_collections[0]) is None
  path.write_text(good)
  config.eval.k = 50  # another setting: another key, so the teacher is evaluated again
  with pytest.raises(AssertionError, match="evaluated again"):
    demo.reference_rows(config)
