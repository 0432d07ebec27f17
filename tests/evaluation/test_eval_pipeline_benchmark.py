"""benchmarks/eval_pipeline.py runs end to end on a small corpus and prints its table (the
numbers in the report come from it: a broken script must show here)."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # every test here runs over ~5 s

NUMBER = r"[\d,]+(?:\.\d+)?"


def test_eval_pipeline_prints_the_tokenizer_and_both_evaluations(tmp_path):
  path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "eval_pipeline.py"), "--passages", "300",
       "--chunk", "64", "--queries", "5", "--batch", "8", "--repeats", "1", "--workdir", str(tmp_path)],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=path))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert re.search(r"^CPU: .+, \d+ cores", out, re.M), out
  for row in ("tokenizer alone", "corpus scan", "first evaluation (tokenise in the background",
              "second evaluation (cached token ids",
              "first evaluation, a model that computes nothing"):
    assert re.search(rf"^\| {re.escape(row)}.* \| {NUMBER} \| {NUMBER} \| ", out, re.M), out
  for row in ("on the host, float64 numpy (before)", "on the device, DeviceTopK (after)",
              "of which the host's: candidates read back, rescored, ranked"):
    assert re.search(rf"^\| {re.escape(row)} \| {NUMBER} \| \d+% \|$", out, re.M), out
  # The token cache the benchmark's evaluations made: one entry, complete.
  (entry,) = [p for p in tmp_path.glob("corpus-*/tokens/*")]
  assert (entry / "meta.json").is_file()
