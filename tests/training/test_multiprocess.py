"""Several processes (jax.distributed on localhost, the command-line flags) train and evaluate
exactly as one process with the same global batch and devices does."""

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from optical_jax.evaluation.collections import results_dir
from optical_jax.evaluation.io import read_run
from optical_jax.training.input_pipeline import gather_lengths, process_shards
from tests.helpers import ROOT
from tests.training.runs import (assert_same_params, final_params, run_train, toy_collection,
                                 write_config)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_processes(script: str, arguments: list[str], *, processes: int = 2,
                  devices: int = 1) -> list[subprocess.CompletedProcess]:
  """`script` run as `processes` processes of `devices` fake CPU devices each."""
  address = f"localhost:{_free_port()}"
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  started = [subprocess.Popen(
      [sys.executable, str(ROOT / script), *arguments, f"--coordinator_address={address}",
       f"--num_processes={processes}", f"--process_id={i}"], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]
  results = []
  for process in started:
    out, err = process.communicate(timeout=600)
    results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
  for result in results:
    assert result.returncode == 0, result.stderr[-3000:]
  return results


def _losses(workdir):
  return [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
          if "loss" in r]


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
  """The run the two-process runs must reproduce: one process with two devices, ot+contrastive
  (the OT term and the contrastive gather), checkpoints at steps 2 and 4, the toy collection."""
  root, checkpoint, bitext, _ = setup
  path = tmp_path_factory.mktemp("one_process")
  config = write_config(path / "mp.py", checkpoint, bitext, loss="ot+contrastive",
                        num_train_steps=5, checkpoint_every_steps=2,
                        **{"eval.collections": [toy_collection(root)],
                           "eval.dev_collection": "toy"})
  run_train(config, path / "one", devices=2)
  return config, path / "one"


def _assert_same_run(one, many, steps: int = 5):
  assert_same_params(final_params(one), final_params(many), atol=1e-5)
  assert _losses(many) == pytest.approx(_losses(one), abs=1e-5)
  # The same ranking; scores differ in the last digit (cross-process sums add up in another
  # order), which the evaluation test below rules out for one checkpoint.
  run_one, run_many = (read_run(results_dir(w, steps) / "runs" / "toy.trec")
                       for w in (one, many))
  assert {q: sorted(d, key=d.get) for q, d in run_one.items()} == {
      q: sorted(d, key=d.get) for q, d in run_many.items()}
  assert all(run_many[q][d] == pytest.approx(v, abs=1e-4) for q in run_one
             for d, v in run_one[q].items())
  assert not list(many.glob(".optical-tmp-*")) and (many / "curves.png").is_file()


@pytest.mark.slow
def test_processes_halted_and_resumed_end_as_one_uninterrupted_process(one_process, tmp_path):
  config, one = one_process
  arguments = [f"--config={config}", f"--workdir={tmp_path / 'many'}"]
  first = run_processes("train.py", arguments + ["--config.train.halt_after_steps=3"])
  assert "halted after step 3" in first[0].stdout
  again = run_processes("train.py", arguments)
  assert "resumed from step 2" in again[0].stdout
  assert "2 device(s) in 2 process(es)" in again[0].stderr
  assert "training examples" not in again[1].stderr  # process 0 speaks for the run
  _assert_same_run(one, tmp_path / "many")


@pytest.mark.slow
def test_processes_with_two_devices_each_train_as_one_process_with_four(setup, tmp_path):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "mp.py", checkpoint, bitext, loss="ot+contrastive",
                        **{"eval.collections": [toy_collection(root)],
                           "eval.dev_collection": "toy"})
  one, many = tmp_path / "one", tmp_path / "many"
  run_train(config, one, devices=4)
  out = run_processes("train.py", [f"--config={config}", f"--workdir={many}"], devices=2)
  assert "4 device(s) in 2 process(es)" in out[0].stderr
  _assert_same_run(one, many, steps=3)  # write_config's default


@pytest.mark.slow
def test_a_two_process_evaluation_writes_the_one_process_run_file(one_process, tmp_path):
  config, one = one_process
  workdir = tmp_path / "run"
  shutil.copytree(one, workdir)
  run_file = lambda w: results_dir(w, 5) / "runs" / "toy.trec"
  run_file(workdir).unlink()
  out = run_processes("eval.py", [f"--config={config}", f"--checkpoint={workdir}",
                                  "--step=latest"])
  assert run_file(workdir).read_bytes() == run_file(one).read_bytes()
  assert "| toy |" in out[0].stdout and "| toy |" not in out[1].stdout


# train.py, counting the texts each process hands to a tokenizer.
COUNTING_TRAIN = textwrap.dedent("""\
    import atexit, json, os, runpy, sys
    from transformers import PreTrainedTokenizerBase
    texts, call = [], PreTrainedTokenizerBase.__call__
    def counting(self, text, *args, **kwargs):
      texts.extend([text] if isinstance(text, str) else text)
      return call(self, text, *args, **kwargs)
    PreTrainedTokenizerBase.__call__ = counting
    from optical_jax.files import token_arrays  # before train.py imports it: its users get this one
    ids_tokenizer = token_arrays.ids_tokenizer
    def counting_ids(tokenizer, max_length):
      tokenize = ids_tokenizer(tokenizer, max_length)
      if not tokenizer.is_fast:
        return tokenize  # called through __call__, counted there
      return lambda batch: (texts.extend(batch), tokenize(batch))[1]
    token_arrays.ids_tokenizer = counting_ids
    process = sys.argv[-1].split("=")[1]  # --process_id=I
    atexit.register(lambda: open(os.path.join(os.environ["COUNT_DIR"], process), "w").write(
        json.dumps(texts)))
    sys.argv[0] = TRAIN
    sys.path.insert(0, os.path.dirname(TRAIN))  # as `python train.py` would
    runpy.run_path(TRAIN, run_name="__main__")
    """)


@pytest.mark.slow
def test_each_process_tokenises_and_caches_only_its_rows(setup, tmp_path, monkeypatch):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "mp.py", checkpoint, bitext, num_train_steps=2)
  script = tmp_path / "counting_train.py"
  script.write_text(f"TRAIN = {str(ROOT / 'train.py')!r}\n" + COUNTING_TRAIN)
  monkeypatch.setenv("COUNT_DIR", str(tmp_path))
  run_processes(str(script), [f"--config={config}", f"--workdir={tmp_path / 'run'}"], devices=2)
  rows = [line.split("\t") for line in bitext.read_text().splitlines()]
  texts = [json.loads((tmp_path / str(i)).read_text()) for i in range(2)]
  # Batch 8 on 4 devices: 8 shards of 8 of the 64 rows, 4 shards per process.
  assert [len(t) for t in texts] == [2 * 32, 2 * 32]
  every = collections.Counter(text for row in rows for text in row)
  assert collections.Counter(texts[0]) + collections.Counter(texts[1]) == every
  for i in range(2):
    caches = list((tmp_path / "cache" / "teacher_tokens" / f"process-{i}-of-2").glob(
        "teacher-tokens-*/done.npy"))
    assert len(caches) == 1 and np.load(caches[0]).shape == (32,)


def _mesh(*process_of_device):
  return SimpleNamespace(devices=np.array([SimpleNamespace(process_index=p)
                                           for p in process_of_device]))


def test_a_process_has_the_shards_of_its_devices_batch_rows():
  assert process_shards(_mesh(0), 4) == [0, 1, 2, 3]
  assert process_shards(_mesh(0, 1), 8) == [0, 1, 2, 3]
  assert process_shards(_mesh(1, 0, 1, 0), 8) == [2, 3, 6, 7]


def test_gathered_lengths_are_each_rows_length_in_row_order():
  lengths = np.arange(10, 33, dtype=np.int32)  # 23 rows in 4 shards of 6, 6, 6 and 5
  local = {s: lengths[s::4] for s in range(4)}
  np.testing.assert_array_equal(gather_lengths(local, 23, 4), lengths)
  with pytest.raises(RuntimeError, match=r"shards \[0, 1, 3\] are not each of the 4"):
    gather_lengths({s: local[s] for s in (0, 1, 3)}, 23, 4)


@pytest.mark.slow
def test_a_lost_process_is_named_in_one_line_with_the_checkpoint_kept(setup, tmp_path):
  """A process killed mid-run: the survivor says in one line which process was lost and
  which checkpoint is kept (`runtime.peer_timeout`), not JAX's C++ abort."""
  import signal
  import time
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "lost.py", checkpoint, bitext, num_train_steps=100_000,
                        checkpoint_every_steps=2, **{"runtime.peer_timeout": 5.0,
                                                     "train.log_every_steps": 1})
  workdir = tmp_path / "run"
  address = f"localhost:{_free_port()}"
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  started = [subprocess.Popen(
      [sys.executable, str(ROOT / "train.py"), f"--config={config}", f"--workdir={workdir}",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / "2").is_dir():  # training is under way
      assert time.monotonic() < deadline and started[0].poll() is None, "no checkpoint 2"
      time.sleep(0.5)
    started[1].send_signal(signal.SIGKILL)
    out, err = started[0].communicate(timeout=120)
  finally:
    for process in started:
      process.kill()
  assert started[0].returncode == 1, err[:6000]
  line = next(l for l in err.splitlines() if l.startswith("error: "))
  assert line.startswith("error: process 0 of 2: process 1 is lost ("), line
  assert "); the last checkpoint (step " in line, line
  assert line.endswith(f"is kept in {workdir / 'checkpoints'}; start every process again to "
                       "resume")
  assert "Traceback" not in err
