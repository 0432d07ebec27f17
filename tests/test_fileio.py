"""Files written whole or not at all (`optical_jax.fileio`)."""

import os
import subprocess
import sys

import pytest

from optical_jax import fileio
from tests.helpers import ROOT


def test_write_text_atomic_replaces_the_file_through_a_synced_temporary(tmp_path, monkeypatch):
  path = tmp_path / "eval.json"
  path.write_text("old\n")
  renames, synced = [], []
  real_replace, real_fsync = os.replace, os.fsync
  monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
  monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
  assert fileio.write_text_atomic(path, "new\n") == path
  assert path.read_text() == "new\n"
  [(source, target)] = renames
  # Beside the file (a rename within one directory is atomic), named with the pid.
  assert target == path and source.parent == path.parent and str(os.getpid()) in source.name
  assert synced, "the data must be on disk before the rename"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{"complete": true}\n')
  with pytest.raises(UnicodeEncodeError):
    fileio.write_text_atomic(path, "half written \udcff")  # fails inside the write
  with pytest.raises(KeyboardInterrupt):
    with fileio.atomic_writer(path) as f:
      f.write("{")
      raise KeyboardInterrupt  # Ctrl-C mid-write
  assert path.read_text() == '{"complete": true}\n'
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_fileio_imports_nothing_heavy():
  code = "import sys, optical_jax.fileio; print(' '.join(sorted(sys.modules)))"
  loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, cwd=ROOT).stdout.split())
  assert not {m for m in loaded if m.split(".")[0] in ("numpy", "jax", "ml_collections",
                                                       "transformers", "absl")}
  assert not {m for m in loaded if m.startswith("optical_jax.") and m != "optical_jax.fileio"}
