"""Training: multi-device equivalence, resume, failure modes, the tiny config end to end."""

import contextlib
import io
import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optical_jax.evaluation.collections import read_results, results_dir
from tests.helpers import ROOT, load_config
from tests.training.runs import (SENTENCES, keyed, assert_same_params, final_params,
                                 final_params_at, run_train, toy_collection, train_here,
                                 write_config)


# ot+contrastive holds the OT term and the cross-device contrastive gather, ot+maxsim the
# gather of teacher tokens for MaxSim; plain ot adds nothing. data.pair_window: examples of
# joined pairs, found from every row whatever the devices.
@pytest.mark.slow
@pytest.mark.parametrize("loss, window", [("ot+contrastive", 1), ("ot+maxsim", 1), ("ot", 3)])
def test_two_devices_match_one_device(setup, loss, window):
  root, checkpoint, bitext, _ = setup
  name = f"{loss.replace('+', '_')}_{window}"
  windows = {"data.pair_window": window, "data.max_length": 32} if window > 1 else {}
  config = write_config(root / f"pmap_{name}.py", checkpoint, bitext, loss=loss, **windows)
  one, two = root / f"one_{name}", root / f"two_{name}"
  train_here(config, one)
  out = run_train(config, two, devices=2)
  assert "2 device(s)" in out.stderr + out.stdout
  examples = int(re.search(r"(\d+) training examples", out.stderr + out.stdout).group(1))
  assert examples < 64 if window > 1 else examples == 64  # 64 pairs, joined or not
  p1, p2 = final_params(one), final_params(two)
  initial = final_params_at(one, 1)
  assert max(float(np.max(np.abs(p1[k] - initial[k]))) for k in p1) > 1e-4, "params moved"
  assert_same_params(p1, p2, atol=1e-5)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_parameters(setup, capsys):
  root, checkpoint, bitext, _ = setup
  config = write_config(root / "resume.py", checkpoint, bitext, num_train_steps=6,
                        checkpoint_every_steps=2, keep_checkpoints=2)
  straight, resumed = root / "straight", root / "resumed"
  train_here(config, straight)
  # A relative --workdir, as in the README (Orbax itself only takes absolute paths).
  train_here(config, Path(os.path.relpath(resumed)), {"train.halt_after_steps": 3})
  assert "halted after step 3" in capsys.readouterr().out
  train_here(config, resumed)
  assert "resumed from step 2" in capsys.readouterr().out
  assert_same_params(final_params(straight), final_params(resumed), atol=1e-6)
  steps = [json.loads(l)["step"] for l in (resumed / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps) and steps.count(3) == 1, "metrics of redone steps not doubled"
  for artefact in ("curves.png", "config.json", "tensorboard", "metrics.jsonl"):
    assert (resumed / artefact).exists(), artefact
  assert sorted(int(p.name) for p in (resumed / "checkpoints").iterdir()
                if p.name.isdigit()) == [4, 6]


@pytest.mark.slow
def test_frozen_parameters_stay_put_and_have_no_optimizer_state(setup):
  root, checkpoint, bitext, _ = setup
  config = write_config(root / "frozen.py", checkpoint, bitext, loss="ot+contrastive",
                        trainable="embeddings|layer_1/output_dense")
  train_here(config, root / "frozen")
  first, last = final_params_at(root / "frozen", 1), final_params(root / "frozen")
  moved = {k for k in first if np.max(np.abs(first[k] - last[k])) > 0}
  assert moved and all("embeddings" in k or "'layer_1']['output_dense'" in k for k in moved)
  assert any("word_embeddings" in k for k in moved) and any("layer_1" in k for k in moved)
  import jax
  import orbax.checkpoint as ocp
  restored = ocp.CheckpointManager(root / "frozen" / "checkpoints").restore(3)
  adam_paths = {jax.tree_util.keystr(p) for p, _ in
                jax.tree_util.tree_leaves_with_path(restored["opt_state"])}
  assert adam_paths and not any("attention" in p or "layer_0" in p for p in adam_paths)

  from optical_jax.config import ConfigError
  with pytest.raises(ConfigError, match="config.train.trainable 'no_such_layer' matches no "
                     "parameter"):
    train_here(write_config(root / "bad_trainable.py", checkpoint, bitext,
                            trainable="no_such_layer"), root / "bad")


@pytest.mark.slow
def test_cached_teacher_tokens_train_as_the_teacher_in_the_step_does(setup, caplog):
  root, checkpoint, bitext, _ = setup
  caplog.set_level(logging.INFO, logger="optical_jax")
  config = write_config(root / "cached.py", checkpoint, bitext, loss="ot+contrastive",
                        cache_dir=str(root / "fresh_cache"))

  def logged():
    messages = caplog.messages
    caplog.clear()
    return messages

  train_here(config, root / "inline", {"data.teacher_cache": False})
  assert not any("teacher token cache" in m for m in logged())
  train_here(config, root / "cached_first")
  assert any("encoded 24 pairs" in m for m in logged())  # 3 steps of 8 pairs
  train_here(config, root / "cached_again")
  assert any("encoded 0 pairs" in m for m in logged())
  assert_same_params(final_params(root / "inline"), final_params(root / "cached_first"),
                     atol=1e-6)
  assert_same_params(final_params(root / "inline"), final_params(root / "cached_again"),
                     atol=1e-6)


@pytest.mark.slow
def test_teacher_stage_trains_on_triples(setup):
  root, checkpoint, _, triples = setup
  config = write_config(root / "teacher.py", checkpoint, triples, stage="teacher",
                        num_train_steps=2)
  train_here(config, root / "teacher_run")
  losses = [json.loads(l)["loss"] for l in (root / "teacher_run" / "metrics.jsonl")
            .read_text().splitlines() if "loss" in l]
  assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.slow
def test_so_config_fails_fast_offline_naming_what_is_missing(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
  result = run_train(ROOT / "configs" / "so.py", tmp_path / "so", check=False,
                     extra=[f"--config.runtime.cache_dir={tmp_path / 'cache'}"])
  assert result.returncode != 0
  # Fast: before any model is loaded or anything but the library log is written (the run's
  # inputs come first).
  written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
  assert written == ["so/logs/libraries.log"], written
  # The first asset it needs is the bitext: what, the command that downloads it, where it goes.
  assert ("error: the bitext quickmt/quickmt-train.so-en: HF_HUB_OFFLINE=1 and it is not in "
          "the cache; where there is internet run `hf download quickmt/quickmt-train.so-en "
          "--repo-type dataset --include 'data/train-*.parquet'` (it goes to the Hugging Face "
          f"cache {tmp_path / 'hf' / 'hub'})") in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # no traceback


@pytest.mark.slow
def test_final_evaluation_reuses_the_last_steps_dev_evaluation(setup, monkeypatch):
  root, checkpoint, bitext, _ = setup
  from optical_jax.training import loop
  config = load_config(write_config(root / "reuse.py", checkpoint, bitext, num_train_steps=2,
                                    **{"eval.collections": [toy_collection(root)],
                                       "eval.dev_collection": "toy"}))
  calls = []
  evaluate = loop.Evaluator.evaluate
  monkeypatch.setattr(loop.Evaluator, "evaluate",
                      lambda self, spec, *a, **k: calls.append((spec.name, k.get("cache"))) or
                      evaluate(self, spec, *a, **k))
  result = loop.train_and_evaluate(config, root / "reuse")
  # Step 0 and step 2; the final table takes step 2's, whose embeddings alone are cached.
  assert calls == [("toy", False), ("toy", True)]
  dev = [r for r in result.history if "dev_MAP" in r]
  assert [r["step"] for r in dev] == [0, 2]
  assert result.collections["toy"].values["MAP"] == dev[-1]["dev_MAP"]
  assert set(result.collections["toy"].per_query["MAP"]) == set(result.collections["toy"].run)
  assert (results_dir(root / "reuse", 2) / "runs" / "toy.trec").is_file()
  assert result.step == 2 and set(result.params) == {"encoder"}
  # Where the time went, by phase; the two dev evaluations counted apart from the steps.
  assert list(result.seconds) == ["set-up", "steps", "dev evaluation", "final evaluation"]
  assert all(v >= 0 for v in result.seconds.values()) and result.seconds["dev evaluation"] > 0


@pytest.fixture(scope="module")
def evaluated_run(setup):
  """A 2-step run with a dev collection: its config, workdir and what the run printed."""
  root, checkpoint, bitext, _ = setup
  collection = toy_collection(root)
  config = write_config(root / "with_eval.py", checkpoint, bitext, num_train_steps=2,
                        **{"eval.collections": [collection], "eval.dev_collection": "toy"})
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    train_here(config, root / "with_eval")
  return config, root / "with_eval", printed.getvalue()


@pytest.mark.slow
def test_eval_cli_evaluates_a_trained_checkpoint(evaluated_run):
  config, workdir, trained_stdout = evaluated_run
  assert "| toy |" in trained_stdout
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                        f"--checkpoint={workdir}"], env=env, capture_output=True,
                       text=True, check=True, timeout=300).stdout
  assert f"{workdir}: step 2 (best)" in out  # best/ by dev MAP, here also the last step
  row = next(line for line in out.splitlines() if line.startswith("| toy |"))
  assert row == next(line for line in trained_stdout.splitlines() if line.startswith("| toy |"))
  assert read_results(workdir, 2)["results"]["toy"]["MAP"] > 0
  assert (results_dir(workdir, 2) / "runs" / "toy.trec").is_file()
  import orbax.checkpoint as ocp
  best = ocp.CheckpointManager(workdir / "best")
  assert best.latest_step() == 2
  assert set(best.restore(best.latest_step())) == {"params"}  # evaluation needs no optimizer


@pytest.mark.slow
def test_eval_cli_exports_the_trained_student_for_transformers(setup, evaluated_run, tmp_path):
  from tests.helpers import torch_last_hidden
  from optical_jax import load_encoder
  config, workdir, _ = evaluated_run
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                  f"--checkpoint={workdir}", f"--export_hf={tmp_path / 'student'}"], env=env,
                 capture_output=True, text=True, check=True, timeout=300)
  exported = load_encoder(tmp_path / "student")
  trained = final_params(workdir)
  flat = keyed(exported.params)
  assert flat.keys() == {k.removeprefix("['encoder']") for k in trained}
  for key, value in flat.items():
    np.testing.assert_array_equal(value, trained["['encoder']" + key])
  assert not np.array_equal(flat["['layer_0']['output_dense']['kernel']"],
                            keyed(load_encoder(setup[1]).params)[
                                "['layer_0']['output_dense']['kernel']"]), "not trained"
  batch = exported.tokenize(["Yesu analira.", "Ndipo Mulungu anati, Kuyere; ndipo kunayera."])
  np.testing.assert_allclose(
      torch_last_hidden(tmp_path / "student", batch["input_ids"], batch["attention_mask"]),
      np.asarray(exported.apply(exported.params, batch["input_ids"], batch["attention_mask"])),
      atol=1e-4, rtol=0)
  from transformers import AutoModel
  _, info = AutoModel.from_pretrained(str(tmp_path / "student"), output_loading_info=True)
  assert not info["missing_keys"] and not info["mismatched_keys"], info  # pooler included


def test_a_refused_config_writes_nothing(tmp_path):
  from optical_jax.config import ConfigError, base_config
  from optical_jax.training.loop import train_and_evaluate
  config = base_config()
  config.model.attention = "flash"
  with pytest.raises(ConfigError, match="config.model.attention"):
    train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_training_batches_are_padded_to_the_configured_length_buckets(setup, tmp_path):
  from optical_jax import load_encoder
  from optical_jax.config import base_config
  from optical_jax.models.student import DistillationModels
  from optical_jax.training.input_pipeline import make_batches
  root, checkpoint, _, _ = setup
  encoder = load_encoder(str(checkpoint))
  config = base_config()
  config.train.batch_size, config.data.max_length = 4, 32
  rows = SENTENCES * 4  # the longer side of each pair: 22, 7, 25 and 23 tokens
  models = DistillationModels(encoder, encoder)
  default = make_batches(config, models, rows, tmp_path)
  config.data.length_buckets = (8, 24, 30)
  configured = make_batches(config, models, rows, tmp_path)
  assert default.shapes == [16, 32]
  assert configured.shapes == [8, 24, 30]


@pytest.mark.parametrize("field", ["data", "eval"])
def test_token_limit_beyond_the_encoders_positions_is_named(field, setup, tmp_path):
  from optical_jax.config import ConfigError, base_config
  from optical_jax.training.loop import train_and_evaluate
  root, checkpoint, bitext, _ = setup  # a BERT with 128 positions
  config = base_config()
  config.model.teacher, config.data.train_file = str(checkpoint), str(bitext)
  config.runtime.cache_dir = str(tmp_path / "cache")
  config[field].max_length = 129
  with pytest.raises(ConfigError, match=re.escape(
      f"config.{field}.max_length 129 is longer than the 128 tokens the teacher ({checkpoint}) "
      "has position embeddings for")):
    train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
@pytest.mark.parametrize("retained", [False, True])
def test_retain_not_applied_before_jax_started_is_warned(retained, monkeypatch, caplog,
                                                         tmp_path):
  from optical_jax.config import base_config
  from optical_jax.runtime import host_memory
  from optical_jax.training.loop import train_and_evaluate
  monkeypatch.setattr(host_memory, "_retained", retained)
  config = base_config()  # host_memory "retain", the default
  config.data.train_file = str(tmp_path / "missing.tsv")  # stops the run after the check
  with caplog.at_level("WARNING", logger="optical_jax"), pytest.raises(Exception):
    train_and_evaluate(config, tmp_path)
  assert ("config.runtime.host_memory 'retain' is not in effect" in caplog.text) is not retained


@pytest.mark.slow
def test_a_collection_id_with_whitespace_is_refused_before_training(tmp_path):
  from tests.training.runs import SENTENCES, run_train, toy_collection, write_config
  bitext = tmp_path / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in SENTENCES))
  collection = toy_collection(tmp_path)
  (tmp_path / "corpus.tsv").write_text("d0\tfirst\nd 1\tsecond\n")
  # A teacher that does not exist: the check comes before any model loads.
  config = write_config(tmp_path / "config.py", tmp_path / "no_teacher", bitext,
                        **{"eval.collections": [collection]})
  result = run_train(config, tmp_path / "run", check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert (f"error: {tmp_path / 'corpus.tsv'}:2: document id 'd 1' contains whitespace"
          in result.stderr), result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
