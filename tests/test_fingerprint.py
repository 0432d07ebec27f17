"""Content fingerprints: what the caches are keyed by, so they can never serve stale content."""

import os
import shutil

import pytest

from optical_jax.files import fingerprint
from optical_jax.files.textfiles import DataFormatError
from tests.helpers import save_tiny_bert


def test_a_files_digest_follows_its_content_not_its_path_or_time(tmp_path):
  a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
  a.write_text("x\ty\n")
  b.write_text("x\ty\n")
  same = fingerprint.file_digest(b)
  assert fingerprint.file_digest(a) == same  # another path, the same content
  first = fingerprint.file_fingerprint(a, tmp_path / "memo")
  a.write_text("x\tz\n")  # edited in place: same size, within the same second
  assert fingerprint.file_fingerprint(a, tmp_path / "memo") != first
  os.utime(b, ns=(1, 1))  # touched, not changed
  assert fingerprint.file_digest(b) == same
  assert (tmp_path / "memo" / "fingerprints.json").is_file()
  with pytest.raises(DataFormatError, match="no such file"):
    fingerprint.file_digest(tmp_path / "missing")


def test_a_checkpoint_reexported_in_place_gets_another_digest(tmp_path):
  directory = save_tiny_bert(tmp_path / "model", seed=0)
  before = fingerprint.checkpoint_digest(directory)
  copy = tmp_path / "copy"
  shutil.copytree(directory, copy)
  assert fingerprint.checkpoint_digest(copy) == before  # the same weights elsewhere
  save_tiny_bert(directory, seed=1)  # other weights at the same path
  assert fingerprint.checkpoint_digest(directory) != before
  tokenizer_only = fingerprint.checkpoint_digest(directory, files=fingerprint.TOKENIZER_FILES)
  assert tokenizer_only == fingerprint.checkpoint_digest(copy, files=fingerprint.TOKENIZER_FILES)
