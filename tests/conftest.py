"""Shared fixtures; helpers live in `tests/helpers.py`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from optical_jax.assets import minilm_checkpoint_dir
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
