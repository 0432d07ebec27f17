"""Shared fixtures; helpers live in `tests/helpers.py`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One XLA compilation cache for the whole session, this process and the processes it starts
# (train.py / eval.py runs, pytest-xdist's workers: they inherit it): the many tiny trainings
# compile the same steps.
_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="optical_jax_tests_xla_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

from pathlib import Path

import pytest

from optical_jax.data.assets import minilm_checkpoint_dir
from tests.helpers import save_tiny_bert, save_tiny_xlmr


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
  return minilm_checkpoint_dir()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
  return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory) -> Path:
  return save_tiny_xlmr(tmp_path_factory.mktemp("tiny_xlmr"))


def pytest_sessionfinish(session, exitstatus):
  if _XLA_CACHE:
    import shutil
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)
