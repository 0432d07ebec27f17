"""A workdir's safety: one run at a time, the same config on resume, a clean stop on SIGTERM
and Ctrl-C, corrupt or unwritable checkpoints, and a console without library chatter."""

import errno
import collections
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from optical_jax.runtime.lock import WorkdirBusy, workdir_lock
from tests.helpers import ROOT
from tests.training.runs import (assert_same_params, final_params, run_train, train_here,
                                 write_config)


@pytest.mark.slow
def test_a_live_runs_lock_is_refused_and_a_dead_ones_taken_over(setup, tmp_path, caplog):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "lock.py", checkpoint, bitext)
  workdir = tmp_path / "run"
  workdir.mkdir()
  with workdir_lock(workdir):  # this process is the live run
    busy = run_train(config, workdir, check=False)
  assert busy.returncode == 1
  assert f"is in use by another run (pid {os.getpid()} on {socket.gethostname()})" in busy.stderr
  assert not (workdir / "checkpoints").exists()

  dead = subprocess.Popen(["true"])
  dead.wait()
  (workdir / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
  train_here(config, workdir)
  assert f"its run (pid {dead.pid} on {socket.gethostname()}) is no longer running" in (
      caplog.text)
  assert not (workdir / ".lock").exists()  # released at the end


def test_the_lock_is_never_held_twice_when_runs_race_for_a_stale_one(tmp_path, monkeypatch):
  """Runs (threads here: each opens the lock file itself, as processes do) race, round after
  round, for a lock a dead run left, read slowly (as on a network filesystem); inside it each
  creates a file no other may hold."""
  from types import SimpleNamespace
  from optical_jax.runtime import lock as lock_module

  def slow_loads(text):
    time.sleep(0.005)
    return json.loads(text)

  monkeypatch.setattr(lock_module, "json", SimpleNamespace(
      loads=slow_loads, dumps=json.dumps, dump=json.dump))
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = json.dumps({"host": socket.gethostname(), "pid": dead.pid})
  runs, rounds, barrier = 4, 20, threading.Barrier(4)
  taken, overlaps = collections.Counter(), []

  def run(index):
    for round_ in range(rounds):
      if barrier.wait() == 0:
        (tmp_path / ".lock").write_text(stale)
      barrier.wait()
      try:
        with workdir_lock(tmp_path):
          taken[round_] += 1
          try:
            os.close(os.open(tmp_path / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
          except FileExistsError:
            overlaps.append(round_)
            continue
          time.sleep(0.002)
          os.unlink(tmp_path / "inside")
      except WorkdirBusy:
        pass

  threads = [threading.Thread(target=run, args=(i,)) for i in range(runs)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not overlaps
  assert all(taken[r] >= 1 for r in range(rounds))  # the stale lock was taken over each time
  assert not (tmp_path / ".lock").exists()


def test_a_run_releases_only_its_own_lock(tmp_path):
  other = json.dumps({"host": "elsewhere", "pid": 1})
  with workdir_lock(tmp_path):
    os.replace(_write(tmp_path / "other", other), tmp_path / ".lock")  # not ours any more
  assert (tmp_path / ".lock").read_text() == other


def _write(path, text):
  path.write_text(text)
  return path


@pytest.mark.slow
def test_resuming_under_a_changed_config_is_refused_unless_asked_for(setup, tmp_path, caplog):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "change.py", checkpoint, bitext)
  workdir = tmp_path / "run"
  train_here(config, workdir, {"train.halt_after_steps": 1})
  saved = (workdir / "config.json").read_text()
  refused = run_train(config, workdir, extra=["--config.loss=mse"], check=False)
  assert refused.returncode == 1
  assert "config.loss: 'ot' -> 'mse'" in refused.stderr
  assert "--config.train.resume_with_changes=True" in refused.stderr
  assert len(refused.stderr.strip().splitlines()) <= 3, refused.stderr
  assert (workdir / "config.json").read_text() == saved  # not overwritten
  # Changes that do not alter training are fine; an explicit flag allows the rest.
  train_here(config, workdir, {"train.halt_after_steps": 1, "runtime.progress_bar": True})
  train_here(config, workdir, {"loss": "mse", "train.resume_with_changes": True})
  assert "resuming under a changed configuration: loss" in caplog.text
  assert json.loads((workdir / "config.json").read_text())["loss"] == "mse"


def test_a_field_added_since_the_run_was_saved_counts_at_its_default():
  from optical_jax.config import ConfigError, base_config
  from optical_jax.training.workdir import check_resumed_config
  config = base_config()
  saved = json.loads(config.to_json_best_effort())
  del saved["ot"]["marginals"]  # a run saved before the field existed
  assert check_resumed_config(json.dumps(saved), config) == []
  config.ot.marginals = "idf"
  with pytest.raises(ConfigError, match="config.ot.marginals: None -> 'idf'"):
    check_resumed_config(json.dumps(saved), config)


def test_a_run_saved_before_commits_were_recorded_resumes_and_a_changed_commit_is_named():
  from optical_jax.config import ConfigError, base_config
  from optical_jax.training.workdir import check_resumed_config
  config = base_config()
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["teacher_revision"]  # a run saved before commits were recorded
  config.model.teacher_revision = "1" * 40  # resolved now
  assert check_resumed_config(json.dumps(saved), config) == []
  saved["model"]["teacher_revision"] = "2" * 40  # the run's commit; another now
  with pytest.raises(ConfigError, match="config.model.teacher_revision: '2222"):
    check_resumed_config(json.dumps(saved), config)


def _start(config, workdir):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"--config={config}",
                           f"--workdir={workdir}"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_step(workdir, step, process, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    metrics = workdir / "metrics.jsonl"
    if metrics.is_file() and any(json.loads(line)["step"] >= step
                                 for line in metrics.read_text().splitlines() if line.strip()):
      return
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  raise AssertionError("the run did not get going")


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
  """A 60-step config and the parameters its uninterrupted run ends with."""
  root, checkpoint, bitext, _ = setup
  directory = tmp_path_factory.mktemp("uninterrupted")
  config = write_config(directory / "stop.py", checkpoint, bitext, num_train_steps=60,
                        checkpoint_every_steps=1000)
  train_here(config, directory / "run")
  return config, final_params(directory / "run")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_and_the_rerun_resumes_to_the_same_end(sig, code, uninterrupted,
                                                                   tmp_path, capsys):
  config, expected = uninterrupted
  stopped = tmp_path / "stopped"
  process = _start(config, stopped)
  _wait_for_step(stopped, 2, process)
  process.send_signal(sig)
  out, err = process.communicate(timeout=300)
  assert process.returncode == code, err
  step = int(out.split("stopped at step ")[1].split(";")[0])
  assert 2 <= step < 60 and "rerun the same command to resume" in out
  assert "Traceback" not in err
  assert (stopped / "checkpoints" / str(step)).is_dir()  # saved on the way out
  train_here(config, stopped)
  assert f"resumed from step {step}" in capsys.readouterr().out
  assert_same_params(expected, final_params(stopped), atol=1e-6)


# Orbax's failed read of the truncated checkpoint leaves TensorStore callbacks that may land on
# its closed event loop once the test is over; pytest reports those in the test's process. A
# `train.py` run of the same fallback prints nothing of it (seen in 4 of 4 runs).
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Exception ignored:pytest.PytestUnraisableExceptionWarning")
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(setup, tmp_path, capsys,
                                                                  caplog):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "corrupt.py", checkpoint, bitext, num_train_steps=4)
  workdir = tmp_path / "run"
  train_here(config, workdir, {"train.halt_after_steps": 3})
  files = sorted((p for p in (workdir / "checkpoints" / "3").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  for path in files[-3:]:  # the array data
    path.write_bytes(path.read_bytes()[:max(1, path.stat().st_size // 3)])
  capsys.readouterr()
  train_here(config, workdir)
  assert f"checkpoint {workdir / 'checkpoints' / '3'} cannot be read" in caplog.text
  assert "falling back to step 2" in caplog.text
  assert (workdir / "corrupt_checkpoints" / "checkpoints-3").is_dir()
  assert "resumed from step 2" in capsys.readouterr().out
  assert 4 in {json.loads(line)["step"]
               for line in (workdir / "metrics.jsonl").read_text().splitlines()}


@pytest.mark.slow
def test_a_torn_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(setup, tmp_path,
                                                                          capsys, caplog):
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "torn.py", checkpoint, bitext, num_train_steps=4)
  workdir = tmp_path / "run"
  train_here(config, workdir, {"train.halt_after_steps": 3})
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "loss": 0.12')  # a crash mid-append
  capsys.readouterr()
  train_here(config, workdir)
  assert f"{workdir / 'metrics.jsonl'}:4: a torn last record" in caplog.text
  assert "resumed from step 3" in capsys.readouterr().out
  steps = [json.loads(line)["step"] for line in
           (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 4 and steps.count(4) == 1


def test_a_broken_metrics_line_before_the_last_is_named(tmp_path):
  from optical_jax.files.textfiles import DataFormatError
  from optical_jax.training.logging import MetricsLog
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 2}\n')
  with pytest.raises(DataFormatError, match=rf"{tmp_path / 'metrics.jsonl'}:2: not a metrics "
                                            "record"):
    MetricsLog(tmp_path, 2)


@pytest.mark.slow
def test_an_unwritable_checkpoint_directory_fails_at_once(setup, tmp_path):
  if os.geteuid() == 0:  # root writes anywhere: make the directory a file instead
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
  else:
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints").chmod(0o500)
  root, checkpoint, bitext, _ = setup
  config = write_config(tmp_path / "ro.py", checkpoint, bitext)
  result = run_train(config, workdir, check=False)
  assert result.returncode == 1
  # At once: nothing trained, encoded or recorded (only the library log) before the
  # checkpoints were found unwritable.
  written = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
  assert written == ["checkpoints", "logs/libraries.log"][os.geteuid() != 0:], written
  assert f"{workdir / 'checkpoints'}: cannot write checkpoints" in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


@pytest.mark.slow
def test_a_full_disk_is_one_clear_error_keeping_the_last_checkpoint(setup, tmp_path,
                                                                    monkeypatch):
  import orbax.checkpoint as ocp
  from optical_jax.training import checkpoints
  from optical_jax.training.loop import train_and_evaluate
  from tests.helpers import load_config
  root, checkpoint, bitext, _ = setup
  config = load_config(write_config(tmp_path / "full.py", checkpoint, bitext, num_train_steps=4))
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 3:
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(checkpoints.CheckpointFault, match=r"cannot write checkpoint 3 \(No space "
                     r"left on device\); the last good checkpoint \(step 2\) is kept"):
    train_and_evaluate(config, tmp_path / "run")
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_the_console_shows_our_messages_and_libraries_log_to_a_file(setup, tmp_path):
  root, checkpoint, bitext, _ = setup
  workdir = tmp_path / "run"
  # As the README's demo command installs it: transformers finds no torch, and warns at import.
  no_torch = tmp_path / "no_torch"
  no_torch.mkdir()
  (no_torch / "sitecustomize.py").write_text(
      "import importlib.util\n"
      "find_spec = importlib.util.find_spec\n"
      "importlib.util.find_spec = lambda name, package=None: (\n"
      "    None if name.split('.')[0] == 'torch' else find_spec(name, package))\n")
  out = run_train(write_config(tmp_path / "quiet.py", checkpoint, bitext), workdir,
                  env={"PYTHONPATH": os.pathsep.join(filter(None, (
                      str(no_torch), os.environ.get("PYTHONPATH"))))})
  console = out.stdout + out.stderr
  for chatter in ("async_io_engine", "event_tracking", "standard_logger", "PyTorch was not found",
                  "local_files_only"):
    assert chatter not in console
  assert "64 training examples" in console
  assert "orbax" in (workdir / "logs" / "libraries.log").read_text()


@pytest.mark.slow
def test_a_file_size_limit_stops_at_the_first_failed_save_in_one_line(setup, tmp_path):
  """A quota's EFBIG in Orbax's background write: one line naming the step whose save failed;
  the run stops at the first log step that sees it, at the latest before the next save."""
  root, checkpoint, bitext, _ = setup  # a tiny BERT: its word embeddings are a 3.9 MB array
  config = write_config(tmp_path / "quota.py", checkpoint, bitext, num_train_steps=12,
                        checkpoint_every_steps=4, **{"train.log_every_steps": 2})
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  # Files of at most 2,930 KiB (the shell's limit; Python ignores SIGXFSZ, so writes get EFBIG).
  command = (f"ulimit -f 2930 && exec {sys.executable} {ROOT / 'train.py'} --config={config} "
             f"--workdir={tmp_path / 'run'}")
  result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 1
  assert f"{tmp_path / 'run' / 'checkpoints'}: cannot write checkpoint 4 (File too large); no " \
         "checkpoint was written" in result.stderr
  assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 4, result.stderr
  steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl")
           .read_text().splitlines()]
  assert max(steps) <= 8  # no save was tried after the failed one
  assert not list((tmp_path / "run" / "checkpoints").glob("8*"))
