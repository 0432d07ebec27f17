"""The Hugging Face hub: whether it is off, and the commit a repository's revision names, so
that a run, its resume and every later evaluation read the same files (`config.json` records
the commit; `optical_jax.data.inputs` resolves it once)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# A full commit hash: what a pinned revision field holds.
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_offline() -> bool:
  """Whether the Hugging Face hub is off (`HF_HUB_OFFLINE`): only its cache may be read."""
  if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
    return True
  from huggingface_hub import constants
  return bool(constants.HF_HUB_OFFLINE)


def commit_of(repo_id: str, *, repo_type: str = "model", revision: str = "") -> str:
  """The commit that `revision` (a commit, branch or tag; "": the default branch) of a hub
  repository names now: a commit as given; online the hub's answer, offline the cache's
  record of the branch. "" where neither knows it: the download that follows then says what
  is missing, in its own words."""
  if COMMIT.match(revision):
    return revision
  from huggingface_hub import HfApi, constants
  if hub_offline():
    folder = f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = Path(constants.HF_HUB_CACHE) / folder / "refs" / (revision or "main")
    try:
      commit = ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
      return ""
    return commit if COMMIT.match(commit) else ""
  try:
    return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision or None).sha or ""
  except Exception:  # not there, not reachable: the download names it
    return ""
