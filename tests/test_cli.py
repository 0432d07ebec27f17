"""What a user sees from train.py for the mistakes made first: one or two lines, no traceback."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _train(*arguments):
  return subprocess.run([sys.executable, str(ROOT / "train.py"), *arguments],
                        capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("arguments, code, message", [
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.train.lerning_rate=3"], 2,
     "error: --config.train.lerning_rate: config.train.lerning_rate is not a config field; did "
     "you mean config.train.learning_rate?"),
    (["--config", "configs/nope.py", "--workdir", "W"], 2,
     "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["--config", "configs/tiny.py", "--workdir", "README.md"], 1,
     "README.md is a file; give a directory"),
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.data.train_file=missing.tsv"],
     1, "error: config.data.train_file: missing.tsv does not exist."),
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.ot.max_iterations=0"], 1,
     "error: config.ot.max_iterations must be a positive integer, got 0"),
    # The optional groups alike: an unknown field or a bad value is named before any input is
    # read (CIRAL's downloads, the demo's first student).
    (["--config", "configs/demo.py", "--workdir", "W", "--config.demo.lossez=('ot',)"], 2,
     "error: --config.demo.lossez: config.demo.lossez is not a config field; did you mean "
     "config.demo.losses?"),
    (["--config", "configs/demo.py", "--workdir", "W", "--config.demo.losses=('ot', 'kl')"], 1,
     "error: config.demo.losses must be a non-empty list or tuple, each item one of ('ot', "),
    (["--config", "configs/so.py", "--workdir", "W", "--config.ciral.heldout_rate=0"], 1,
     "error: config.ciral.heldout_rate must be a positive integer, got 0"),
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.ciral.language=so"], 2,
     "error: --config.ciral.language: this config has no ciral group (ciral is an optional "
     "group: a config file adds it with optional_group('ciral', ...), as configs/ciral.py "
     "does)"),
    (["--config", "configs/tiny.py", "--workdir", "W", "--num_processes", "2"], 1,
     "error: --num_processes and --process_id need --coordinator_address"),
])
def test_first_mistakes_print_at_most_three_lines(arguments, code, message, tmp_path):
  arguments = [str(tmp_path / "W") if a == "W" else a for a in arguments]
  result = _train(*arguments)
  assert result.returncode == code, result.stderr
  assert message in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
  assert "Traceback" not in result.stderr


MISSPELT_FIELD = """
from optical_jax.config import base_config

def get_config():
  c = base_config()
  c.data.train_file = "missing.tsv"  # never read: the misspelt field stops the run first
  c.train.num_steps = 60
  return c
"""
MISSPELT_GROUP = MISSPELT_FIELD.replace("c.train.num_steps", "c.trian.num_train_steps")


@pytest.mark.parametrize("text, overrides, message", [
    (MISSPELT_FIELD, [], "{file}: config.train.num_steps is not a config field; did you mean "
     "config.train.num_train_steps?"),
    # A misspelt group in the file is the file's, at its line, not the valid overrides'.
    (MISSPELT_GROUP, ["--config.train.learning_rate=1e-3"], "{file}:7: config.trian is not a "
     "config group or field; did you mean config.train?"),
])
def test_a_misspelt_field_in_a_config_file_is_refused_in_one_line(text, overrides, message,
                                                                   tmp_path):
  config = tmp_path / "mine.py"
  config.write_text(text)
  result = _train("--config", str(config), "--workdir", str(tmp_path / "W"), *overrides)
  assert result.returncode in (1, 2), result.stderr
  assert result.stderr.startswith(f"error: {message.format(file=config)}"), result.stderr
  assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
  assert not (tmp_path / "W").exists()  # refused before anything ran


def test_verbose_shows_the_traceback(tmp_path):
  result = _train("--config", "configs/tiny.py", "--workdir", str(tmp_path / "W"),
                  "--config.ot.max_iterations=0", "--verbose")
  assert result.returncode != 0 and "Traceback" in result.stderr


SWALLOWED_INTERRUPT = """
import gc, os, signal, sys, time
from optical_jax import cli
from optical_jax.runtime import stopping

cli.define_process_flags()

def main(argv):
  stopping.on_interrupt("the checkpoints are untouched")
  pressed = []
  def _xla_gc_callback(phase, info):  # what JAX runs in every garbage collection
    if phase == "start" and not pressed:  # one Ctrl-C (a second one would end it at once)
      pressed.append(True)
      os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives inside the callback
      time.sleep(0.05)
  gc.callbacks.append(_xla_gc_callback)
  gc.collect()
  gc.callbacks.remove(_xla_gc_callback)
  for _ in range(200):  # the rest of the final evaluation
    time.sleep(0.01)
  print("evaluated every collection", flush=True)

cli.run(main)
"""


def test_ctrl_c_swallowed_by_a_gc_callback_still_stops_with_130(tmp_path):
  script = tmp_path / "program.py"
  script.write_text(SWALLOWED_INTERRUPT)
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 130, result.stderr
  assert result.stderr.strip() == "interrupted; the checkpoints are untouched"
  assert "evaluated every collection" not in result.stdout  # stopped, not just exit 130 at the end
  assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr


def test_the_errors_printed_in_one_line_exist_where_cli_looks_for_them():
  import importlib
  from optical_jax import cli
  for module, name in cli._OUR_ERRORS:
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, Exception) and error.__module__ == module, (module, name)
