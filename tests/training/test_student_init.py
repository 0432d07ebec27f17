"""The student a run starts from lives in its workdir: a copy of the workdir evaluates on a
machine without the training bitext or the cache that built it."""

import json
import shutil
import subprocess
import sys

import pytest

from optical_jax.evaluation.collections import read_results
from tests.helpers import ROOT, load_config
from tests.training.runs import toy_collection, write_config

pytestmark = pytest.mark.slow  # every test here runs over ~5 s


def test_eval_of_a_copied_workdir_needs_neither_the_bitext_nor_the_cache(setup, tmp_path):
  from optical_jax.training.loop import train_and_evaluate
  root, checkpoint, _, _ = setup
  bitext = tmp_path / "bitext.tsv"
  shutil.copy(root / "bitext.tsv", bitext)
  collection = toy_collection(tmp_path)
  config_file = write_config(tmp_path / "extended.py", checkpoint, bitext, num_train_steps=2,
                             cache_dir=str(tmp_path / "cache"), **{
                                 "model.vocab_extension": 8, "data.alignment_pairs": 16,
                                 "eval.collections": [collection],
                                 "eval.dev_collection": "toy"})
  trained = tmp_path / "W"
  results = train_and_evaluate(load_config(config_file), trained)
  init = trained / "student_init"
  assert (init / "vocabulary_adaptation.json").is_file() and (init / "tokenizer.json").is_file()
  saved = json.loads((trained / "config.json").read_text())
  assert saved["model"]["student_init"] == str(init)
  # Another machine: the workdir copied elsewhere, no bitext, an empty cache.
  copy = tmp_path / "elsewhere" / "W"
  shutil.copytree(trained, copy)
  shutil.rmtree(trained)
  bitext.unlink()
  shutil.rmtree(tmp_path / "cache")
  import os
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config_file}",
                        f"--checkpoint={copy}", "--step=latest"], capture_output=True,
                       text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  evaluated = read_results(copy, results.step)
  # The same student and numbers.
  assert evaluated["results"]["toy"] == results.collections["toy"].values
  assert not (tmp_path / "cache" / "adaptation").exists()  # nothing was rebuilt
