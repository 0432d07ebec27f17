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


@pytest.mark.parametrize("arguments, code, message", [
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.train.lerning_rate=3"], 2,
     "error: --config.train.lerning_rate: no such config field ('lerning_rate' Did you mean "
     '"learning_rate"'),
    (["--config", "configs/nope.py", "--workdir", "W"], 2,
     "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["--config", "configs/tiny.py", "--workdir", "README.md"], 1,
     "README.md is a file; give a directory"),
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.data.train_file=missing.tsv"],
     1, "error: config.data.train_file: missing.tsv does not exist."),
    (["--config", "configs/tiny.py", "--workdir", "W", "--config.ot.max_iterations=0"], 1,
     "error: config.ot.max_iterations must be a positive integer, got 0"),
])
def test_first_mistakes_print_at_most_three_lines(arguments, code, message, tmp_path):
  arguments = [str(tmp_path / "W") if a == "W" else a for a in arguments]
  result = _train(*arguments)
  assert result.returncode == code, result.stderr
  assert message in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
  assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback(tmp_path):
  result = _train("--config", "configs/tiny.py", "--workdir", str(tmp_path / "W"),
                  "--config.ot.max_iterations=0", "--verbose")
  assert result.returncode != 0 and "Traceback" in result.stderr
