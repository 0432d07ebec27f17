"""Training: multi-device equivalence, resume, failure modes, the tiny config end to end."""

import json
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import load_config, save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [("Ndipo Mulungu anati, Kuyere; ndipo kunayera.", "And God said, Let there be light."),
             ("Yesu analira.", "Jesus wept."),
             ("Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.",
              "In the beginning God created the heaven and the earth."),
             ("Ndipo madzulo ndi m'mawa anali tsiku loyamba.",
              "And the evening and the morning were the first day.")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  checkpoint = save_tiny_bert(root / "tiny_bert", seed=1)
  rng = np.random.default_rng(0)
  rows = [SENTENCES[i] for i in rng.integers(0, len(SENTENCES), 64)]
  bitext = root / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in rows))
  triples = root / "triples.tsv"
  triples.write_text("".join(f"{t}\t{s}\t{SENTENCES[(i + 1) % 4][1]}\n"
                             for i, (s, t) in enumerate(rows)))
  return root, checkpoint, bitext, triples


def write_config(path: Path, checkpoint: Path, train_file: Path, **overrides) -> Path:
  lines = "\n".join(f"  c.{k} = {v!r}" for k, v in overrides.items())
  path.write_text(textwrap.dedent(f"""\
      from optical_jax.config import base_config

      def get_config():
        c = base_config()
        c.teacher = {str(checkpoint)!r}
        c.data.train_file = {str(train_file)!r}
        c.data.max_length = 16
        c.dropout = 0.0
        c.batch_size = 8
        c.num_train_steps = 3
        c.learning_rate = 1e-3
        c.warmup_steps = 1
        c.log_every_steps = 1
        c.checkpoint_every_steps = 1
        c.progress_bar = False
        c.cache_dir = {str(path.parent / "cache")!r}
      """) + lines + "\n  return c\n")
  return path


def run_train(config: Path, workdir: Path, *, devices: int = 1, extra=(), check=True):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={config}",
                         f"--workdir={workdir}", *extra], env=env, capture_output=True,
                        text=True, check=check, timeout=600)


def final_params(workdir: Path) -> dict[str, np.ndarray]:
  import orbax.checkpoint as ocp
  return final_params_at(workdir, ocp.CheckpointManager(workdir / "checkpoints").latest_step())


def assert_same_params(a, b, atol):
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  assert worst < atol, worst


@pytest.mark.parametrize("loss", ["ot", "ot+contrastive"])
def test_two_devices_match_one_device(setup, loss):
  root, checkpoint, bitext, _ = setup
  config = write_config(root / f"pmap_{loss.replace('+', '_')}.py", checkpoint, bitext, loss=loss)
  one, two = root / f"one_{loss}", root / f"two_{loss}"
  run_train(config, one, devices=1)
  out = run_train(config, two, devices=2)
  assert "2 device(s)" in out.stderr + out.stdout
  p1, p2 = final_params(one), final_params(two)
  initial = final_params_at(one, 1)
  assert max(float(np.max(np.abs(p1[k] - initial[k]))) for k in p1) > 1e-4, "params moved"
  assert_same_params(p1, p2, atol=1e-5)


def final_params_at(workdir, step):
  import orbax.checkpoint as ocp
  return _keyed(ocp.CheckpointManager(workdir / "checkpoints").restore(step)["params"])


def test_interrupted_run_resumes_to_the_same_parameters(setup):
  root, checkpoint, bitext, _ = setup
  config = write_config(root / "resume.py", checkpoint, bitext, num_train_steps=6,
                        checkpoint_every_steps=2, keep_checkpoints=2)
  straight, resumed = root / "straight", root / "resumed"
  run_train(config, straight)
  # A relative --workdir, as in the README (Orbax itself only takes absolute paths).
  halted = run_train(config, Path(os.path.relpath(resumed)),
                     extra=["--config.halt_after_steps=3"])
  assert "halted after step 3" in halted.stdout
  again = run_train(config, resumed)
  assert "resumed from step 2" in again.stdout
  assert_same_params(final_params(straight), final_params(resumed), atol=1e-6)
  steps = [json.loads(l)["step"] for l in (resumed / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps) and steps.count(3) == 1, "metrics of redone steps not doubled"
  for artefact in ("curves.png", "config.json", "tensorboard", "metrics.jsonl"):
    assert (resumed / artefact).exists(), artefact
  assert sorted(int(p.name) for p in (resumed / "checkpoints").iterdir()
                if p.name.isdigit()) == [4, 6]


def test_frozen_parameters_stay_put_and_have_no_optimizer_state(setup):
  root, checkpoint, bitext, _ = setup
  config = write_config(root / "frozen.py", checkpoint, bitext, loss="ot+contrastive",
                        trainable="embeddings|layer_1/output_dense")
  run_train(config, root / "frozen")
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

  bad = run_train(write_config(root / "bad_trainable.py", checkpoint, bitext,
                               trainable="no_such_layer"), root / "bad", check=False)
  assert bad.returncode != 0
  assert "config.trainable 'no_such_layer' matches no parameter" in bad.stderr


def test_cached_teacher_tokens_train_as_the_teacher_in_the_step_does(setup):
  root, checkpoint, bitext, _ = setup
  config = write_config(root / "cached.py", checkpoint, bitext, loss="ot+contrastive",
                        cache_dir=str(root / "fresh_cache"))
  inline = run_train(config, root / "inline", extra=["--config.teacher_cache=False"])
  assert "teacher token cache" not in inline.stderr
  first = run_train(config, root / "cached_first")
  assert "encoded 24 pairs" in first.stderr  # 3 steps of 8 pairs
  again = run_train(config, root / "cached_again")
  assert "encoded 0 pairs" in again.stderr
  assert_same_params(final_params(root / "inline"), final_params(root / "cached_first"),
                     atol=1e-6)
  assert_same_params(final_params(root / "inline"), final_params(root / "cached_again"),
                     atol=1e-6)


def test_non_finite_loss_stops_naming_the_step(setup, tmp_path, monkeypatch):
  root, checkpoint, bitext, _ = setup
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  import optical_jax.train as train_lib
  config = load_config(write_config(tmp_path / "nan.py", checkpoint, bitext, num_train_steps=4))
  import jax.numpy as jnp
  calls = {"n": 0}
  original_step = train_lib.compiled_per_shape

  def make_step(*args, **kwargs):
    step = original_step(*args, **kwargs)

    def wrapped(state, teacher_params, batch, rng):
      calls["n"] += 1
      new_state, metrics = step(state, teacher_params, batch, rng)
      if calls["n"] == 3:
        metrics = dict(metrics, loss=metrics["loss"] * jnp.nan)
      return new_state, metrics
    wrapped.executables = step.executables
    return wrapped

  monkeypatch.setattr(train_lib, "compiled_per_shape", make_step)
  with pytest.raises(train_lib.TrainingError, match=r"non-finite loss \(nan\) at step 3; the "
                     r"last good checkpoint \(step 2\) is kept"):
    train_lib.train_and_evaluate(config, tmp_path / "w")
  assert final_params_at(tmp_path / "w", 2)


def test_teacher_stage_trains_on_triples(setup):
  root, checkpoint, _, triples = setup
  config = write_config(root / "teacher.py", checkpoint, triples, stage="teacher",
                        num_train_steps=2)
  run_train(config, root / "teacher_run")
  losses = [json.loads(l)["loss"] for l in (root / "teacher_run" / "metrics.jsonl")
            .read_text().splitlines() if "loss" in l]
  assert len(losses) == 2 and all(np.isfinite(losses))


def test_so_config_fails_fast_offline_naming_what_is_missing(tmp_path):
  start = time.monotonic()
  result = run_train(ROOT / "configs" / "so.py", tmp_path / "so", check=False)
  assert result.returncode != 0
  assert time.monotonic() - start < 60
  assert "data/ciral/so/topics.tsv does not exist" in result.stderr
  assert "Download CIRAL" in result.stderr


def toy_collection(root: Path) -> dict:
  (root / "topics.tsv").write_text("".join(f"q{i}\t{s}\n" for i, (s, _) in enumerate(SENTENCES)))
  (root / "corpus.tsv").write_text("".join(f"d{i}\t{t}\n" for i, (_, t) in enumerate(SENTENCES)))
  (root / "qrels.txt").write_text("".join(f"q{i} 0 d{i} 1\n" for i in range(len(SENTENCES))))
  return dict(name="toy", topics=str(root / "topics.tsv"), corpus=str(root / "corpus.tsv"),
              qrels=str(root / "qrels.txt"), query_encoder="student", doc_encoder="teacher")


def test_final_evaluation_reuses_the_last_steps_dev_evaluation(setup, monkeypatch):
  root, checkpoint, bitext, _ = setup
  from optical_jax import train
  config = load_config(write_config(root / "reuse.py", checkpoint, bitext, num_train_steps=2,
                                    **{"eval.collections": [toy_collection(root)],
                                       "eval.dev_collection": "toy"}))
  calls = []
  evaluate_collection = train.evaluate_collection
  monkeypatch.setattr(train, "evaluate_collection",
                      lambda spec, *a, **k: calls.append(spec.name) or
                      evaluate_collection(spec, *a, **k))
  results = train.train_and_evaluate(config, root / "reuse")
  assert calls == ["toy", "toy"]  # step 0 and step 2; the final table takes step 2's
  records = (root / "reuse" / "metrics.jsonl").read_text().splitlines()
  dev = [r for r in map(json.loads, records) if "dev_MAP" in r]
  assert [r["step"] for r in dev] == [0, 2]
  assert results["toy"]["MAP"] == dev[-1]["dev_MAP"]
  assert (root / "reuse" / "runs" / "toy.trec").is_file()


@pytest.fixture(scope="module")
def evaluated_run(setup):
  """A 2-step run with a dev collection: its config, workdir and train.py's stdout."""
  root, checkpoint, bitext, _ = setup
  collection = toy_collection(root)
  config = write_config(root / "with_eval.py", checkpoint, bitext, num_train_steps=2,
                        **{"eval.collections": [collection], "eval.dev_collection": "toy"})
  return config, root / "with_eval", run_train(config, root / "with_eval").stdout


def test_eval_cli_evaluates_a_trained_checkpoint(evaluated_run):
  config, workdir, trained_stdout = evaluated_run
  assert "| toy |" in trained_stdout
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                        f"--checkpoint={workdir}"], env=env, capture_output=True,
                       text=True, check=True, timeout=300).stdout
  row = next(line for line in out.splitlines() if line.startswith("| toy |"))
  assert row == next(line for line in trained_stdout.splitlines() if line.startswith("| toy |"))
  assert json.loads((workdir / "eval.json").read_text())["toy"]["MAP"] > 0
  assert (workdir / "runs" / "toy.trec").is_file()
  import orbax.checkpoint as ocp
  best = ocp.CheckpointManager(workdir / "best")
  assert best.latest_step() == 2
  assert set(best.restore(best.latest_step())) == {"params"}  # evaluation needs no optimizer


def test_eval_cli_exports_the_trained_student_for_transformers(setup, evaluated_run, tmp_path):
  from conftest import torch_last_hidden
  from optical_jax import load_encoder
  config, workdir, _ = evaluated_run
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--config={config}",
                  f"--checkpoint={workdir}", f"--export_hf={tmp_path / 'student'}"], env=env,
                 capture_output=True, text=True, check=True, timeout=300)
  exported = load_encoder(tmp_path / "student")
  trained = final_params(workdir)
  flat = _keyed(exported.params)
  assert flat.keys() == {k.removeprefix("['encoder']") for k in trained}
  for key, value in flat.items():
    np.testing.assert_array_equal(value, trained["['encoder']" + key])
  assert not np.array_equal(flat["['layer_0']['output_dense']['kernel']"],
                            _keyed(load_encoder(setup[1]).params)[
                                "['layer_0']['output_dense']['kernel']"]), "not trained"
  batch = exported.tokenize(["Yesu analira.", "Ndipo Mulungu anati, Kuyere; ndipo kunayera."])
  np.testing.assert_allclose(
      torch_last_hidden(tmp_path / "student", batch["input_ids"], batch["attention_mask"]),
      np.asarray(exported.apply(exported.params, batch["input_ids"], batch["attention_mask"])),
      atol=1e-4, rtol=0)


def _keyed(params) -> dict:
  import jax
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.skipif(__import__("jax").default_backend() != "cpu",
                    reason="the schedule is an XLA:CPU option")
def test_cpu_train_step_compiles_once_per_shape_with_the_memory_schedule(tiny_bert_dir):
  import jax
  from optical_jax.config import base_config
  from optical_jax.train import (CPU_SCHEDULES, build_models, compiled_per_shape, initial_state,
                                 make_optimizer, make_train_step, replicate, step_compiler_options)
  config = base_config()
  config.teacher, config.dropout = str(tiny_bert_dir), 0.0
  assert step_compiler_options(config) == CPU_SCHEDULES["memory"]  # the default, on CPU
  models, optimizer = build_models(config), make_optimizer(config)
  teacher_params, rng = replicate(models.teacher.params), replicate(jax.random.PRNGKey(0))

  def batch(length):
    ids = np.random.default_rng(length).integers(1000, 20000, (1, 8, length)).astype(np.int32)
    return {"student_ids": ids, "student_mask": np.ones_like(ids), "teacher_ids": ids,
            "teacher_mask": np.ones_like(ids)}

  steps, losses = {}, {}
  for schedule, options in CPU_SCHEDULES.items():
    steps[schedule] = compiled_per_shape(make_train_step(config, models, optimizer), options)
    state = replicate(initial_state(models, optimizer))
    for length in (16, 24, 16):
      state, metrics = steps[schedule](state, teacher_params, batch(length), rng)
    losses[schedule] = float(metrics["loss"][0])
    assert len(steps[schedule].executables) == 2
  temporary = {schedule: [e.memory_analysis().temp_size_in_bytes
                          for e in step.executables.values()] for schedule, step in steps.items()}
  assert all(m < d for m, d in zip(temporary["memory"], temporary["default"])), temporary
  assert losses["memory"] == pytest.approx(losses["default"], rel=1e-6)


@pytest.mark.parametrize("loss", ["ot", "mse"])
def test_microbatched_step_trains_as_the_whole_batch_does_in_less_memory(loss, tiny_bert_dir):
  import jax
  from optical_jax.config import base_config
  from optical_jax.train import (build_models, compiled_per_shape, initial_state,
                                 make_optimizer, make_train_step, replicate)
  config = base_config()
  config.teacher, config.dropout, config.loss = str(tiny_bert_dir), 0.0, loss
  models, optimizer = build_models(config), make_optimizer(config)
  teacher_params, rng = replicate(models.teacher.params), replicate(jax.random.PRNGKey(0))
  data = np.random.default_rng(0)
  ids = data.integers(1000, 20000, (1, 16, 64)).astype(np.int32)
  mask = (np.arange(64) < data.integers(4, 65, (1, 16, 1))).astype(np.int32)  # padded rows
  batch = {"student_ids": ids, "student_mask": mask, "teacher_ids": ids[..., ::-1].copy(),
           "teacher_mask": mask[..., ::-1].copy()}
  results = {}
  for size in (0, 2):
    config.microbatch_size = size
    step = compiled_per_shape(make_train_step(config, models, optimizer), {})
    state = replicate(initial_state(models, optimizer))
    for _ in range(2):
      state, metrics = step(state, teacher_params, batch, rng)
    executable = step.executable_for(state, teacher_params, batch, rng)
    results[size] = (jax.device_get(state.params), jax.device_get(metrics),
                     executable.memory_analysis().temp_size_in_bytes)
  (whole, whole_metrics, whole_bytes), (split, split_metrics, split_bytes) = results.values()
  for name in whole_metrics:
    np.testing.assert_allclose(split_metrics[name], whole_metrics[name], rtol=1e-5, atol=1e-7)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         split, whole)
  assert split_bytes < whole_bytes, (split_bytes, whole_bytes)  # the chunks ran one by one


@pytest.mark.parametrize("overrides, message", [
    (dict(microbatch_size=3), "config.microbatch_size must be 0 (off) or a positive integer "
                              "that divides the per-device batch 32, got 3"),
    (dict(microbatch_size=8, loss="ot+contrastive"),
     "config.microbatch_size cannot split batches for the contrastive losses"),
    (dict(microbatch_size=8, **{"ot.center": True}),
     "config.microbatch_size cannot split batches for the contrastive losses, the teacher "
     "stage and ot.center"),
])
def test_microbatches_that_would_change_the_loss_are_refused(overrides, message, tmp_path):
  from optical_jax.config import base_config
  from optical_jax.train import TrainingError, train_and_evaluate
  config = base_config()
  for field, value in overrides.items():
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
  with pytest.raises(TrainingError, match=re.escape(message)):
    train_and_evaluate(config, tmp_path)
  assert not any(tmp_path.iterdir())


def test_compiler_options_this_xla_rejects_fall_back_with_a_warning(caplog):
  import jax
  from optical_jax.train import compiled_per_shape
  double = jax.pmap(lambda state, teacher_params, batch, rng: 2 * batch["x"])
  step = compiled_per_shape(double, {"xla_cpu_scheduler_type": "NO_SUCH_SCHEDULE"})
  with caplog.at_level("WARNING", logger="optical_jax"):
    out = step(None, None, {"x": np.ones((1, 3), np.float32)}, None)
  np.testing.assert_array_equal(out, 2 * np.ones((1, 3)))
  assert "NO_SUCH_SCHEDULE" in caplog.text and "compiling without them" in caplog.text


def test_unknown_cpu_schedule_is_named(setup, tmp_path):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "bad.py", checkpoint, bitext, xla_cpu_schedule="fastest")
  result = run_train(config, tmp_path / "bad", check=False)
  assert result.returncode != 0
  assert "config.xla_cpu_schedule must be one of ['default', 'memory'], got 'fastest'" in (
      result.stderr)


def test_unknown_host_memory_is_named(setup, tmp_path):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "bad.py", checkpoint, bitext, host_memory="keep")
  result = run_train(config, tmp_path / "bad", check=False)
  assert result.returncode != 0
  assert "config.host_memory must be one of ('retain', 'release'), got 'keep'" in result.stderr


@pytest.mark.parametrize("attention, dtype, message", [
    ("flash", "bfloat16", "config.attention must be one of ('xla', 'cudnn'), got 'flash'"),
    ("cudnn", "float32", "config.attention 'cudnn' needs an NVIDIA GPU and config.dtype "
                         "'bfloat16'"),
])
def test_attention_this_run_cannot_use_is_named(attention, dtype, message, tmp_path):
  from optical_jax.config import base_config
  from optical_jax.train import TrainingError, train_and_evaluate
  config = base_config()
  config.attention, config.dtype = attention, dtype
  with pytest.raises(TrainingError, match=re.escape(message)):
    train_and_evaluate(config, tmp_path)
  assert not any(tmp_path.iterdir())  # refused before anything was written


def test_training_batches_are_padded_to_the_configured_length_buckets(setup, tmp_path):
  from optical_jax import load_encoder
  from optical_jax.config import base_config
  from optical_jax.train import Models, make_batches
  root, checkpoint, _, _ = setup
  encoder = load_encoder(str(checkpoint))
  config = base_config()
  config.batch_size, config.data.max_length = 4, 32
  rows = SENTENCES * 4  # the longer side of each pair: 22, 7, 25 and 23 tokens
  default = make_batches(config, Models(encoder, encoder, False), rows, tmp_path)
  config.data.length_buckets = (8, 24, 30)
  configured = make_batches(config, Models(encoder, encoder, False), rows, tmp_path)
  assert default.shapes == [16, 32]
  assert configured.shapes == [8, 24, 30]


@pytest.mark.parametrize("field", ["data", "eval"])
def test_token_limit_beyond_the_encoders_positions_is_named(field, setup, tmp_path):
  from optical_jax.config import base_config
  from optical_jax.train import TrainingError, train_and_evaluate
  root, checkpoint, bitext, _ = setup  # a BERT with 128 positions
  config = base_config()
  config.teacher, config.data.train_file = str(checkpoint), str(bitext)
  config.cache_dir = str(tmp_path / "cache")
  config[field].max_length = 129
  with pytest.raises(TrainingError, match=re.escape(
      f"config.{field}.max_length 129 is longer than the 128 tokens the teacher ({checkpoint}) "
      "has position embeddings for")):
    train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unordered_length_buckets_are_named(tmp_path):
  from optical_jax.config import base_config
  from optical_jax.train import TrainingError, train_and_evaluate
  config = base_config()
  config.data.length_buckets = (64, 32)
  with pytest.raises(TrainingError, match=re.escape(
      "config.data.length_buckets must be ascending positive integers, got (64, 32)")):
    train_and_evaluate(config, tmp_path)
  assert not any(tmp_path.iterdir())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
@pytest.mark.parametrize("retained", [False, True])
def test_retain_not_applied_before_jax_started_is_warned(retained, monkeypatch, caplog,
                                                         tmp_path):
  from optical_jax import host_memory
  from optical_jax.config import base_config
  from optical_jax.train import TrainingError, train_and_evaluate
  monkeypatch.setattr(host_memory, "_retained", retained)
  config = base_config()  # host_memory "retain", the default
  config.attention = "flash"  # stops the run at validation, after the check
  with caplog.at_level("WARNING", logger="optical_jax"), pytest.raises(TrainingError):
    train_and_evaluate(config, tmp_path)
  assert ("config.host_memory 'retain' is not in effect" in caplog.text) is not retained
