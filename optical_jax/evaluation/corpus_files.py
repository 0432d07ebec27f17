"""A corpus file read once: its records streamed (never the whole text in memory), and its
scan (every record checked, the docids in order), cached by the file's content fingerprint
(`optical_jax.files.fingerprint.file_fingerprint`) so that later runs and evaluations do not read it
again."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from optical_jax.evaluation.io import ID_WHITESPACE, iter_corpus
from optical_jax.files import fingerprint
from optical_jax.files.cache_files import set_aside, sweep_temporaries, temporary, writing
from optical_jax.files.fingerprint import file_fingerprint
from optical_jax.files.layout import CorpusCache
from optical_jax.files.textfiles import DataFormatError, PathLike

SCAN_FORMAT = 2  # bump when the scan's content changes: older entries are then not read
_SCANS: dict[str, "CorpusScan"] = {}  # this process's scans by fingerprint (a few)


def _read_json(path: Path) -> dict:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}
  return value if isinstance(value, dict) else {}


def _write_json(path: Path, value, what: str) -> None:
  """Writes `path` whole or not at all (a temporary renamed into place)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary(path)
  with writing(path, what, cleanup=[tmp]):
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(value, f)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Records.


# ---------------------------------------------------------------------------------------------
# Scans.


@dataclasses.dataclass
class CorpusScan:
  """What one full read of a corpus file found: its docids in file order (every record
  checked), and counts. `cached`: read from the scan cache rather than the file."""

  path: Path
  fingerprint: str
  docids: list[str]
  characters: int  # of the texts (title and text joined), for the summary
  seconds: float  # the scan's own time (0 when cached)
  cached: bool = False
  # What is derived from the docids (tie ranks, a set), shared by the copies of one scan.
  _derived: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def passages(self) -> int:
    return len(self.docids)

  def ranks(self) -> np.ndarray:
    """Each document's place in trec_eval's tie order (`search.docid_ranks`), computed once
    per process (every dev evaluation of a run uses it)."""
    if "ranks" not in self._derived:
      from optical_jax.evaluation.search import docid_ranks
      self._derived["ranks"] = docid_ranks(self.docids)
    return self._derived["ranks"]

  def docid_set(self) -> frozenset:
    if "set" not in self._derived:
      self._derived["set"] = frozenset(self.docids)
    return self._derived["set"]


def scan_corpus(path: PathLike, cache_dir: PathLike | None = None) -> CorpusScan:
  """The scan of corpus file `path`: from this process's memory or `cache_dir/scans` when
  the same content was scanned before, else read and checked in full (malformed records
  raise `DataFormatError` naming file and line) and remembered there."""
  path = Path(path).expanduser()
  cache = Path(cache_dir).expanduser() if cache_dir is not None else None
  fingerprint = file_fingerprint(path, cache)
  if fingerprint in _SCANS:
    return dataclasses.replace(_SCANS[fingerprint], path=path, cached=True, seconds=0.0)
  entry = CorpusCache(cache).scans / f"{fingerprint}.json" if cache is not None else None
  scan = _read_scan(entry, path, fingerprint) if entry is not None else None
  if scan is None:
    start, docids, characters = time.perf_counter(), [], 0
    for _, docid, text in iter_corpus(path):
      docids.append(docid)
      characters += len(text)
    if file_fingerprint(path, cache) != fingerprint:
      raise DataFormatError(f"{path}: changed while it was being read; run again once it is "
                            "complete")
    scan = CorpusScan(path, fingerprint, docids, characters, time.perf_counter() - start)
    if entry is not None:
      _write_json(entry, {"format": SCAN_FORMAT, "fingerprint": fingerprint,
                          "characters": characters, "docids": docids}, "corpus scan cache")
  if len(_SCANS) >= 4:  # a few corpora at most; the oldest goes
    _SCANS.pop(next(iter(_SCANS)))
  _SCANS[fingerprint] = scan
  return scan


def _read_scan(entry: Path, path: Path, fingerprint: str) -> CorpusScan | None:
  """The cached scan at `entry`, or None when absent; a broken one is removed with a
  warning."""
  sweep_temporaries(entry.parent)
  if not entry.is_file():
    return None
  try:
    value = json.loads(entry.read_text(encoding="utf-8"))
    ok = (isinstance(value, dict) and value.get("format") == SCAN_FORMAT
          and value.get("fingerprint") == fingerprint and isinstance(value.get("docids"), list)
          and all(isinstance(d, str) and d and not ID_WHITESPACE.search(d)
                  for d in value["docids"])
          and len(set(value["docids"])) == len(value["docids"]))
    reason = None if ok else "not a scan of this file's content"
  except (OSError, ValueError) as e:
    reason, value = f"unreadable: {e}", None
  if reason is not None:
    set_aside([entry], reason, "corpus scan cache entry")
    return None
  return CorpusScan(path, fingerprint, value["docids"], int(value.get("characters", 0)), 0.0,
                    cached=True)


def forget_scans() -> None:
  """Drops this process's memory of scans and digests (tests)."""
  _SCANS.clear()
  fingerprint.forget()

