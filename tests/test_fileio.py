"""Files written whole or not at all (`optical_jax.files.fileio`)."""

import os
import subprocess
import sys

import pytest

from optical_jax.files import fileio
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
  # Beside the file (a rename within one directory is atomic), named as the project's own.
  assert target == path and source.parent == path.parent
  assert fileio.TEMPORARY_NAME.match(source.name).groups() == (str(os.getpid()),
                                                               fileio.host_tag(), "eval.json")
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


def test_temporary_names_are_the_projects_own_and_unpredictable(tmp_path):
  names = {fileio.temporary(tmp_path / "cache.npy").name for _ in range(20)}
  assert len(names) == 20
  for name in names:
    assert name.startswith(f".optical-tmp-{os.getpid()}-{fileio.host_tag()}-")
    assert name.endswith("-cache.npy")  # numpy adds no second suffix
  for user in ("data.tmp7.csv", "run.tmp12", "x.tmp12-0123abcd.npy", ".optical-tmp-notes"):
    assert fileio.TEMPORARY_NAME.match(user) is None


def test_a_planted_link_is_never_written_through(tmp_path, monkeypatch):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  shared = tmp_path / "shared"
  shared.mkdir()
  path = shared / "eval.json"
  # Links waiting at the names a temporary of `path` could take: the old predictable one, and
  # the first random one (forced here, as an attacker could only guess it).
  guesses = iter(["deadbeef", "0badf00d"])
  monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(guesses))
  planted = [shared / f"eval.json.tmp{os.getpid()}",
             shared / f".optical-tmp-{os.getpid()}-{fileio.host_tag()}-deadbeef-eval.json"]
  for link in planted:
    link.symlink_to(victim)
  fileio.write_text_atomic(path, "new\n")
  assert path.read_text() == "new\n" and not path.is_symlink()
  assert victim.read_text() == "precious\n"
  assert all(link.is_symlink() for link in planted)
  with pytest.raises(FileExistsError):
    os.close(fileio.create_new(planted[1]))


def test_fileio_imports_nothing_heavy():
  code = "import sys, optical_jax.files.fileio; print(' '.join(sorted(sys.modules)))"
  loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, cwd=ROOT).stdout.split())
  assert not {m for m in loaded if m.split(".")[0] in ("numpy", "jax", "ml_collections",
                                                       "transformers", "absl")}
  assert not {m for m in loaded if m.startswith("optical_jax.")} - {"optical_jax.files",
                                                                    "optical_jax.files.fileio"}
