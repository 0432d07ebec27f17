"""A corpus file read once: its content fingerprint, its records streamed (never the whole
text in memory), and its scan (every record checked, the docids in order), cached by the
fingerprint so that later runs and evaluations do not read it again.

A fingerprint is the file's size and a hash of its bytes, so it follows the content, not the
path: a copy elsewhere is the same corpus, an edit in place another. The hash is computed
once per file version (path, size, mtime in nanoseconds, inode) and remembered on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from optical_jax.evaluation.cache_files import set_aside, sweep_temporaries, temporary, writing
from optical_jax.evaluation.io import _field, _is_header
from optical_jax.textfiles import DataFormatError, PathLike, is_jsonl, json_record, text_lines

SCAN_FORMAT = 2  # bump when the scan's content changes: older entries are then not read
_DIGESTS: dict[str, str] = {}  # this process's content digests by file version
_SCANS: dict[str, "CorpusScan"] = {}  # this process's scans by fingerprint (a few)


# ---------------------------------------------------------------------------------------------
# Fingerprints.


def file_version(path: PathLike) -> str:
  """What changes whenever the file may have: resolved path, size, mtime (ns), inode."""
  path = Path(path)
  stat = path.stat()
  return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"


def file_fingerprint(path: PathLike, memo_dir: PathLike | None = None) -> str:
  """`SIZE-DIGEST` of the file's bytes (blake2b): the same for the same content wherever it
  lies. Hashed once per file version; with `memo_dir` the digest is remembered there
  (`fingerprints.json`) for other runs too."""
  path = Path(path)
  if not path.is_file():
    raise DataFormatError(f"{path}: no such file")
  version = file_version(path)
  if version not in _DIGESTS:
    memo = Path(memo_dir).expanduser() / "fingerprints.json" if memo_dir is not None else None
    if memo is not None:
      sweep_temporaries(memo.parent)
    stored = _read_json(memo) if memo is not None else {}
    if isinstance(stored.get(version), str):
      _DIGESTS[version] = stored[version]
    else:
      digest = hashlib.blake2b(digest_size=16)
      with open(path, "rb") as f:
        while block := f.read(1 << 22):
          digest.update(block)
      if file_version(path) != version:  # written to while it was read: nothing is trusted
        raise DataFormatError(f"{path}: changed while it was being read; run again once it is "
                              "complete")
      _DIGESTS[version] = digest.hexdigest()
      if memo is not None:
        stored[version] = _DIGESTS[version]
        try:  # a read-only cache only costs a hash next time
          _write_json(memo, stored, "fingerprint memo")
        except OSError:
          pass
  return f"{path.stat().st_size}-{_DIGESTS[version]}"


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


def corpus_records(path: PathLike) -> Iterator[tuple[int, str, str]]:
  """(line number, docid, text) of each document in file order, read and checked as
  `io.read_corpus` reads them (a TSV's header line skipped; ids present and unique, a
  non-empty text; errors name `path:line`), but streamed: memory holds the docids seen, never
  the texts."""
  seen: set[str] = set()
  jsonl = is_jsonl(path)
  for index, (number, line) in enumerate(text_lines(path)):
    if jsonl:
      record = json_record(path, number, line)
      docid = _field(path, number, record, ("docid", "doc_id", "_id", "id"), "document id",
                     is_id=True)
      body = _field(path, number, record, ("text", "contents", "body"), "text")
      title = record.get("title")  # optional: absent, null or a string
      if title is not None and not isinstance(title, str):
        raise DataFormatError(f"{path}:{number}: title field 'title' must be a string, got "
                              f"{json.dumps(title)[:60]}")
      title = (title or "").strip()
      text = f"{title} {body}".strip() if title else body.strip()
    else:
      parts = line.split("\t")
      if len(parts) < 2:
        raise DataFormatError(f"{path}:{number}: expected 'docid<TAB>text', got {line[:60]!r}")
      if index == 0 and _is_header(parts):
        continue  # `docid<TAB>text`: names the columns, not a document
      docid, text = parts[0].strip(), " ".join(p.strip() for p in parts[1:] if p.strip())
    if not docid:
      raise DataFormatError(f"{path}:{number}: empty document id")
    if not text:
      raise DataFormatError(f"{path}:{number}: document {docid!r} has an empty text")
    if docid in seen:
      raise DataFormatError(f"{path}:{number}: duplicate document id {docid!r}")
    seen.add(docid)
    yield number, docid, text


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
  entry = cache / "scans" / f"{fingerprint}.json" if cache is not None else None
  scan = _read_scan(entry, path, fingerprint) if entry is not None else None
  if scan is None:
    start, docids, characters = time.perf_counter(), [], 0
    for _, docid, text in corpus_records(path):
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
          and all(isinstance(d, str) and d for d in value["docids"])
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
  _DIGESTS.clear()

