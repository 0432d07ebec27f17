"""The loop as an accelerator sees it: no device reads between log and checkpoint steps,
batches built ahead without changing a bit, a non-finite loss caught on the device, the
teacher cache's policy and size guard, throughput and MFU in the metrics."""

import json
import re
import threading

import numpy as np
import pytest

from tests.helpers import load_config
from tests.training.runs import final_params, final_params_at, run_train, write_config


def _config(root, name, checkpoint, bitext, **overrides):
  return load_config(write_config(root / f"{name}.py", checkpoint, bitext, **overrides))


def test_prefetch_builds_the_next_batch_while_the_step_runs():
  from optical_jax.training.prefetch import Prefetcher
  steps = 6

  def run(depth):
    started = [threading.Event() for _ in range(steps)]

    def build(step):
      started[step].set()
      return step

    overlapped = []
    with Prefetcher(build, 0, steps, depth=depth) as prefetcher:
      for step in range(steps - 1):
        assert prefetcher.get(step) == step  # in order
        # The device step runs now: the next batch is built meanwhile, unasked (a thread that
        # never starts it fails the wait; the serial loop builds it only in the next `get`).
        overlapped.append(started[step + 1].wait(timeout=30 if depth else 0.05))
      assert prefetcher.get(steps - 1) == steps - 1
    return overlapped

  assert run(0) == [False] * (steps - 1)
  assert run(2) == [True] * (steps - 1)


def test_an_error_in_the_prefetch_thread_surfaces_at_its_step():
  from optical_jax.files.textfiles import DataFormatError
  from optical_jax.training.prefetch import Prefetcher

  def build(step):
    if step == 3:
      raise DataFormatError("train.tsv:7: empty student")
    return step

  with Prefetcher(build, 0, 6, depth=2) as prefetcher:
    assert [prefetcher.get(s) for s in range(3)] == [0, 1, 2]
    with pytest.raises(DataFormatError, match="train.tsv:7: empty student") as error:
      prefetcher.get(3)
  assert "building the batch of step 4" in "".join(error.value.__notes__)


@pytest.mark.slow
def test_prefetch_and_log_interval_change_no_bit_of_the_result(setup, tmp_path):
  from optical_jax.training.loop import train_and_evaluate
  root, checkpoint, bitext, _ = setup
  params = {}
  for prefetch, log_every in ((0, 1), (2, 1), (2, 4)):
    config = _config(tmp_path, f"p{prefetch}l{log_every}", checkpoint, bitext,
                     loss="ot+contrastive", num_train_steps=4, checkpoint_every_steps=4,
                     cache_dir=str(tmp_path / "cache"), **{"data.prefetch": prefetch,
                                                           "train.log_every_steps": log_every})
    workdir = tmp_path / f"run_{prefetch}_{log_every}"
    train_and_evaluate(config, workdir)
    params[prefetch, log_every] = final_params(workdir)
  reference = params[0, 1]  # built in the loop, metrics read every step: the synchronous loop
  for key, other in params.items():
    assert reference.keys() == other.keys()
    for name in reference:
      np.testing.assert_array_equal(reference[name], other[name], err_msg=f"{key} {name}")


@pytest.mark.slow
def test_no_device_reads_between_log_and_checkpoint_steps(setup, tmp_path, monkeypatch):
  """The loop reads the devices through `jax.device_get` (and `float`, `int`...), which go
  through `ArrayImpl._value`: count those reads by the step the loop had dispatched last. (On
  CPU `np.asarray` reads a buffer without it; on accelerators the loop's transfer guard
  refuses implicit reads between those steps.)"""
  from jax._src import array as jax_array
  from optical_jax.runtime import host
  from optical_jax.training import loop, step as step_lib
  root, checkpoint, bitext, _ = setup
  config = _config(tmp_path, "reads", checkpoint, bitext, num_train_steps=10,
                   checkpoint_every_steps=5, **{"train.log_every_steps": 5,
                                                "data.teacher_cache": False})
  dispatched, reads = {"step": 0}, []
  original_step = step_lib.compiled_per_shape

  def counting_step(*args, **kwargs):
    step = original_step(*args, **kwargs)

    def wrapped(*a):
      out = step(*a)
      dispatched["step"] += 1
      return out
    wrapped.executables, wrapped.flops_for = step.executables, step.flops_for
    return wrapped

  value = jax_array.ArrayImpl._value

  def read(self):
    reads.append(dispatched["step"])
    return value.fget(self)

  to_host = host.to_host
  monkeypatch.setattr(step_lib, "compiled_per_shape", counting_step)
  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(read))
  monkeypatch.setattr(host, "to_host", lambda tree: reads.append(dispatched["step"]) or
                      to_host(tree))
  loop.train_and_evaluate(config, tmp_path / "w")
  assert dispatched["step"] == 10
  steps_read = set(reads)
  assert 5 in steps_read and 10 in steps_read, steps_read  # the log and checkpoint steps read
  assert steps_read <= {0, 5, 10}, sorted(steps_read)


@pytest.mark.slow
def test_a_non_finite_loss_is_named_with_the_window_it_fell_in(setup, tmp_path, monkeypatch):
  import jax.numpy as jnp
  from optical_jax.training import loop, step as step_lib
  root, checkpoint, bitext, _ = setup
  config = _config(tmp_path, "nan", checkpoint, bitext, num_train_steps=8,
                   checkpoint_every_steps=2, **{"train.log_every_steps": 8})
  original_step, calls = step_lib.compiled_per_shape, {"n": 0}

  def make_step(*args, **kwargs):
    step = original_step(*args, **kwargs)

    def wrapped(*a):
      calls["n"] += 1
      state, metrics = step(*a)
      if calls["n"] == 3:
        metrics = dict(metrics, loss=metrics["loss"] * jnp.inf)
      return state, metrics
    wrapped.executables, wrapped.flops_for = step.executables, step.flops_for
    return wrapped

  monkeypatch.setattr(step_lib, "compiled_per_shape", make_step)
  with pytest.raises(loop.TrainingError, match=re.escape(
      "non-finite loss at step 3 (steps 3-4 ran since the last check); the last finite "
      "checkpoint (step 2) is kept")):
    loop.train_and_evaluate(config, tmp_path / "w")
  saved = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == [2]  # step 4 came after the non-finite step: never checkpointed
  assert calls["n"] == 4
  assert final_params_at(tmp_path / "w", 2)


@pytest.mark.parametrize("setting, backend, expected", [
    ("auto", "cpu", True), ("auto", "gpu", False), ("auto", "tpu", False),
    (True, "gpu", True), (False, "cpu", False)])
def test_the_teacher_cache_is_on_for_cpu_only_by_default(setting, backend, expected):
  from optical_jax.config import base_config, validate
  from optical_jax.training.input_pipeline import uses_teacher_cache
  config = base_config()
  assert config.data.teacher_cache == "auto"
  config.data.teacher_cache = setting
  validate(config)
  assert uses_teacher_cache(config, backend) is expected
  config.stage = "teacher"
  assert not uses_teacher_cache(config, backend)


@pytest.mark.slow
def test_a_cache_over_its_limit_is_refused_before_the_first_step(setup, tmp_path):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "big.py", checkpoint, bitext)
  result = run_train(config, tmp_path / "w", check=False,
                     extra=["--config.data.teacher_cache=True",
                            "--config.data.teacher_cache_max_gb=0.00001"])
  assert result.returncode == 1
  error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1, result.stderr
  # 64 pairs' teacher tokens x 32 wide x 4 bytes (float32, the compute dtype).
  assert re.search(r"the teacher token cache would take [\d.]+ kB \([\d,]+ tokens x 32 x 4 "
                   r"bytes, float32\), more than config\.data\.teacher_cache_max_gb=1e-05; raise "
                   r"config\.data\.teacher_cache_max_gb or set config\.data\.teacher_cache=False",
                   error[0]), error[0]
  assert not (tmp_path / "w" / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (tmp_path / "w" / "checkpoints").iterdir())
  assert "Traceback" not in result.stderr


def test_a_cache_larger_than_the_free_disk_is_refused(setup, tmp_path, monkeypatch):
  import collections
  import shutil
  from optical_jax.config import ConfigError
  from optical_jax.training.loop import train_and_evaluate
  root, checkpoint, bitext, _ = setup
  config = _config(tmp_path, "disk", checkpoint, bitext, cache_dir=str(tmp_path / "cache"),
                   **{"data.teacher_cache": True})
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
  with pytest.raises(ConfigError, match=r"more than the 1 kB free on .*\(config\.data\."
                     r"teacher_cache=True, config\.data\.teacher_cache_max_gb=20\.0\)"):
    train_and_evaluate(config, tmp_path / "w")


@pytest.mark.slow
def test_every_log_step_records_throughput_and_mfu_where_the_peak_is_known(setup, tmp_path,
                                                                           monkeypatch):
  from optical_jax.training import loop
  root, checkpoint, bitext, _ = setup
  config = _config(tmp_path, "rates", checkpoint, bitext, num_train_steps=4,
                   checkpoint_every_steps=4, **{"train.log_every_steps": 2})
  monkeypatch.setattr(loop, "peak_flops", lambda kind, dtype: 1e12)  # a made-up device
  loop.train_and_evaluate(config, tmp_path / "w")
  records = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text()
             .splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [2, 4]
  for r in logged:
    assert r["tokens_per_sec"] > 0 and r["examples_per_sec"] > 0
    assert r["examples_per_sec"] == pytest.approx(8 * r["steps_per_sec"], rel=1e-6)  # batch 8
    assert r["step_tflops_per_device"] > 0
    assert r["mfu"] == pytest.approx(r["step_tflops_per_device"] * r["steps_per_sec"], rel=1e-6)


@pytest.mark.parametrize("kind, dtype, tflops", [
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312), ("NVIDIA A100-SXM4-40GB", "float32", 156),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989), ("NVIDIA H100 PCIe", "bfloat16", 756),
    ("NVIDIA H200", "bfloat16", 989), ("NVIDIA L4", "bfloat16", 121),
    ("NVIDIA L40S", "bfloat16", None),  # not an L4
    ("Tesla T4", "float32", 8.1), ("TPU v2", "bfloat16", 22.5), ("TPU v3", "bfloat16", 61.5),
    ("TPU v4", "bfloat16", 275), ("TPU v5 lite", "bfloat16", 197), ("TPU v5e", "bfloat16", 197),
    ("TPU v5p", "bfloat16", 459), ("TPU v5", "bfloat16", 459), ("TPU v6 lite", "bfloat16", 918),
    ("cpu", "float32", None)])
def test_the_peak_table_knows_the_usual_devices(kind, dtype, tflops):
  from optical_jax.training.throughput import peak_flops
  assert peak_flops(kind, dtype) == (None if tflops is None else tflops * 1e12)


@pytest.mark.parametrize("broken, message", [
    ("qrels", r"qrels\.txt:2: "),
    ("corpus", r"corpus\.tsv:3: "),
])
def test_a_malformed_collection_fails_before_the_first_step(setup, tmp_path, broken, message):
  from optical_jax.files.textfiles import DataFormatError
  from optical_jax.training import loop, prepare
  from tests.training.runs import toy_collection
  root, checkpoint, bitext, _ = setup
  collection = toy_collection(tmp_path)
  path = tmp_path / ("qrels.txt" if broken == "qrels" else "corpus.tsv")
  lines = path.read_text().splitlines()
  lines[1 if broken == "qrels" else 2] = "q1 0 d1" if broken == "qrels" else "d0\tduplicate"
  path.write_text("\n".join(lines) + "\n")
  config = _config(tmp_path, "bad", checkpoint, bitext, **{
      "eval.collections": [collection], "eval.dev_collection": "toy"})
  built = []
  original = prepare.make_batches
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(prepare, "make_batches", lambda *a, **k: built.append(1) or original(*a, **k))
    with pytest.raises(DataFormatError, match=message):
      loop.train_and_evaluate(config, tmp_path / "w")
  assert not built  # before the training data was even tokenised


@pytest.mark.slow
def test_judged_documents_absent_from_the_corpus_are_warned_before_training(setup, tmp_path,
                                                                           caplog):
  from optical_jax.training import loop
  from tests.training.runs import toy_collection
  root, checkpoint, bitext, _ = setup
  collection = toy_collection(tmp_path)
  (tmp_path / "qrels.txt").write_text("q0 0 D-0 1\nq1 0 D-1 1\nq2 0 d2 1\n")
  config = _config(tmp_path, "absent", checkpoint, bitext, num_train_steps=1, **{
      "eval.collections": [collection], "eval.dev_collection": "toy"})
  with caplog.at_level("INFO", logger="optical_jax"):
    loop.train_and_evaluate(config, tmp_path / "w")
  text = caplog.text
  assert "2 of 3 judged documents" in text and "absent from the corpus" in text
  assert text.index("absent from the corpus") < text.index("training examples")
