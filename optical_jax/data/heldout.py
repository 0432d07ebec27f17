"""A bitext split once into training pairs and a held-out retrieval collection: a large
bitext (CIRAL's hub parquet, `data.ciral.build_bitext`) is streamed once, cleaned, and each
held-out sentence made a query that retrieves its translation. Built into a temporary
directory renamed into place whole, so a killed build leaves nothing half-written and
processes building the same directory at once keep one."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from optical_jax.files.cache_files import CacheWriteError, sweep_temporaries, temporary
from optical_jax.files.textfiles import DataFormatError

log = logging.getLogger("optical_jax")


def _key(text: str) -> bytes:
  return hashlib.blake2b(text.casefold().encode(), digest_size=8).digest()


def clean_pairs(pairs: Iterable[tuple[str, str]], *, max_chars: int = 0,
                dropped: Counter | None = None) -> Iterator[tuple[str, str]]:
  """Pairs with whitespace normalised, dropping (and counting in `dropped`) those with an
  empty side, a side over `max_chars` characters (0: no limit; a truncated side is no longer
  a translation of the other), both sides the same text (untranslated copies) and repeats of
  an earlier pair (case-insensitive)."""
  dropped = Counter() if dropped is None else dropped
  seen = set()
  for student, teacher in pairs:
    student, teacher = " ".join(student.split()), " ".join(teacher.split())
    if not student or not teacher:
      dropped["empty"] += 1
    elif max_chars and max(len(student), len(teacher)) > max_chars:
      dropped["too_long"] += 1
    elif student.casefold() == teacher.casefold():
      dropped["identical"] += 1
    else:
      key = _key(f"{student}\t{teacher}")
      if key in seen:
        dropped["duplicate"] += 1
        continue
      seen.add(key)
      yield student, teacher


HELDOUT_VERSION = 1  # bump when build_heldout's output changes
# Held-out pairs need a few words a side: the corpora start with dictionary and title pairs
# ("Muqdisho" / "Mogadishu"), which would make trivial or ambiguous queries.
HELDOUT_MIN_WORDS = 4


def is_heldout_candidate(student: str, rate: int) -> bool:
  """Whether a pair is held out: its student text's hash falls in the first 1/`rate` of the
  range. By content, so the choice does not depend on the order, the row limit or repeats."""
  return int.from_bytes(_key(student), "big") % rate == 0


def build_heldout(directory: str | Path, open_pairs, *, limit: int = 0, heldout: int = 1000,
                  rate: int = 1000, max_chars: int = 0, source: dict | None = None,
                  progress: bool = True) -> dict:
  """Cleans the pairs of `open_pairs()` and writes into `directory` (once; a later call reads
  its manifest without calling `open_pairs`):

  - `train.tsv`: `student<TAB>teacher`, at most `limit` pairs (0: all);
  - `dev/topics.tsv`, `dev/corpus.tsv`, `dev/qrels.txt`: up to `heldout` held-out pairs
    (`is_heldout_candidate`, with at least `HELDOUT_MIN_WORDS` words a side and no side
    repeated), each student sentence a query whose one relevant document is its translation;
  - `manifest.json`: counts, dropped pairs by reason, `source` (what the pairs came from).

  No training pair shares a side with a held-out pair. Reading stops once both parts are full.
  """
  directory = Path(directory)
  manifest = _current_build(directory)
  if manifest is not None:
    return manifest
  from tqdm.auto import tqdm
  from optical_jax.evaluation.io import write_qrels, write_tsv
  directory.parent.mkdir(parents=True, exist_ok=True)
  sweep_temporaries(directory.parent)  # builds killed before they finished (gigabytes each)
  tmp = temporary(directory)
  tmp.mkdir()  # a fresh random name: never an existing path (mkdir refuses one)
  dropped, read = Counter(), Counter()
  dev, dev_keys, train_count = [], set(), 0

  def counted(pairs):
    for pair in pairs:
      read["rows"] += 1
      yield pair

  bar = tqdm(total=limit or None, desc=f"bitext {directory.name}", unit=" pairs",
             disable=not progress, leave=False)
  with open(tmp / "train.unfiltered.tsv", "w", encoding="utf-8") as f:
    for student, teacher in clean_pairs(counted(open_pairs()), max_chars=max_chars,
                                        dropped=dropped):
      keys = (_key(student), _key(teacher))
      if keys[0] in dev_keys or keys[1] in dev_keys:
        dropped["shares_a_side_with_heldout"] += 1
        continue
      if len(dev) < heldout and is_heldout_candidate(student, rate) and min(
          len(student.split()), len(teacher.split())) >= HELDOUT_MIN_WORDS:
        dev.append((student, teacher))
        dev_keys.update(keys)
        continue
      # Past the limit, a few spare pairs stand in for those a later held-out pair removes.
      if limit and train_count >= limit + 2 * heldout:
        if len(dev) >= heldout:
          break
        continue
      f.write(f"{student}\t{teacher}\n")
      train_count += 1
      bar.update(train_count <= limit or not limit)
  bar.close()
  # Drop pairs written before a held-out pair sharing a side was chosen; keep `limit`.
  train_count = 0
  with open(tmp / "train.unfiltered.tsv", encoding="utf-8") as f, \
      open(tmp / "train.tsv", "w", encoding="utf-8") as out:
    for line in f:
      if limit and train_count >= limit:
        break
      student, teacher = line.rstrip("\n").split("\t")
      if _key(student) in dev_keys or _key(teacher) in dev_keys:
        dropped["shares_a_side_with_heldout"] += 1
        continue
      out.write(line)
      train_count += 1
  (tmp / "train.unfiltered.tsv").unlink()
  where = (source or {}).get("name", str(directory))
  if not train_count:
    raise DataFormatError(f"{where}: no training pairs left after cleaning "
                          f"({_describe(read['rows'], dropped)})")
  if heldout and not dev:
    raise DataFormatError(f"{where}: no pair was held out of {read['rows']} rows (1 in {rate} "
                          "is); lower the held-out rate")
  if dev:
    write_tsv({f"q{i}": s for i, (s, _) in enumerate(dev)}, tmp / "dev" / "topics.tsv")
    write_tsv({f"d{i}": t for i, (_, t) in enumerate(dev)}, tmp / "dev" / "corpus.tsv")
    write_qrels({f"q{i}": {f"d{i}": 1} for i in range(len(dev))}, tmp / "dev" / "qrels.txt")
  manifest = {"version": HELDOUT_VERSION, "source": source or {},
              "params": {"limit": limit, "heldout": heldout, "rate": rate,
                         "max_chars": max_chars},
              "counts": {"rows_read": read["rows"], "train": train_count, "heldout": len(dev),
                         "dropped": dict(sorted(dropped.items()))}}
  (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  built = _publish(tmp, directory)
  if built is not None:  # another process built it first (multi-process runs build in parallel)
    return built
  log.info("bitext %s: %d training pairs, %d held out (%s) in %s", where, train_count, len(dev),
           _describe(read["rows"], dropped), directory)
  return manifest


_MANIFEST_KEYS = {"version", "source", "params", "counts"}  # what build_heldout writes


def _manifest(directory: Path) -> dict | None:
  """The manifest of a build of ours (any version) in `directory`, or None: a directory, not
  a link, whose `manifest.json` has every field `build_heldout` writes. Only such a one may
  be replaced: a user's directory that merely has a file of that name is not."""
  if directory.is_symlink():
    return None
  try:
    manifest = json.loads((directory / "manifest.json").read_text())
  except (OSError, ValueError):
    return None
  return manifest if isinstance(manifest, dict) and _MANIFEST_KEYS <= manifest.keys() else None


def _current_build(directory: Path) -> dict | None:
  """The manifest of a complete build of this version in `directory`, or None."""
  manifest = _manifest(directory)
  return manifest if manifest is not None and manifest["version"] == HELDOUT_VERSION else None


def _publish(tmp: Path, directory: Path) -> dict | None:
  """Renames the finished build `tmp` to `directory`. Where another process put a current
  build there first, that one stays (its manifest is returned, `tmp` removed); an older one
  (ours: `_manifest` knows it) is moved aside, then deleted, never checked and deleted in two
  steps; anything else there is refused and left as it is. None once `tmp` is in place."""
  while True:
    try:
      os.rename(tmp, directory)
      return None
    except OSError:
      if not directory.exists():
        raise  # not a build in the way: permissions, another filesystem
    current = _current_build(directory)
    if current is not None:
      shutil.rmtree(tmp, ignore_errors=True)
      return current
    if _manifest(directory) is None:
      shutil.rmtree(tmp, ignore_errors=True)  # ours; what is in the way is not: it stays
      error = CacheWriteError(f"{directory} is in the way of the bitext build and is not one "
                              "(no manifest.json of ours): move it, or set "
                              "config.runtime.cache_dir elsewhere")
      error.errno, error.filename = errno.EEXIST, str(directory)
      raise error
    old = temporary(directory)
    try:
      os.rename(directory, old)
    except FileNotFoundError:
      continue  # moved meanwhile: try again
    if _current_build(old) is not None:  # a current build put in place since the check
      try:
        os.rename(old, directory)
      except OSError:  # and another since: that one stays
        shutil.rmtree(old, ignore_errors=True)
      continue
    shutil.rmtree(old, ignore_errors=True)


def _describe(rows: int, dropped: Counter) -> str:
  reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items()))
  return f"{rows} rows read" + (f"; dropped: {reasons}" if reasons else "")
