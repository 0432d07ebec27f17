"""Reading training text: bitext pairs and (query, positive[, negative]) triples.

From TSV (columns in order), JSONL (named fields) or parquet (named columns, read with
pyarrow), or from a Hugging Face dataset. `build_heldout` streams a large bitext once, cleans
it, and writes a training file plus a held-out retrieval collection (each held-out sentence
retrieves its translation). Errors name the file and line (or parquet row); nothing here knows
about configs (`optical_jax.inputs` reads them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from optical_jax.cache_files import sweep_temporaries, temporary
from optical_jax.textfiles import DataFormatError, is_jsonl, json_record, text_lines

log = logging.getLogger("optical_jax")

# A first TSV column whose every value looks like this is an id column, not text.
_ID_LIKE = re.compile(r"^[\w.:/#-]*\d[\w.:/#-]*$")
_ID_CHECK_ROWS = 100
# A TSV's first line that names its columns instead of giving a pair: each needed column is a
# configured field name, one of these, or a language code (`ny`, `en`, `eng_Latn`, `so-en`).
_COLUMN_NAMES = frozenset({"src", "tgt", "source", "target", "student", "teacher", "text",
                           "translation", "sentence", "query", "positive", "negative"})
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z]{2,4})?$")
_noted_headers: set[str] = set()  # files whose header line was noted (once per process)


def _is_header(path, number: int, parts: Sequence[str], fields: Sequence[str]) -> bool:
  """Whether the first line of a TSV (`number`, `parts`) is a header naming its columns; said
  once per file."""
  names = [part.strip() for part in parts[:len(fields)]]
  if len(names) < len(fields) or not all(
      name in fields or name.lower() in _COLUMN_NAMES or _LANGUAGE_CODE.match(name)
      for name in names):
    return False
  if str(path) not in _noted_headers:
    _noted_headers.add(str(path))
    log.info("%s:%d: skipped a header line (%s), not a pair", path, number, ", ".join(names))
  return True


def _json_text(path, number: int, record: dict, field: str) -> str:
  if field not in record:
    raise DataFormatError(f"{path}:{number}: missing field {field!r}")
  value = record[field]
  if not isinstance(value, str):
    kind = "null" if value is None else type(value).__name__
    raise DataFormatError(f"{path}:{number}: field {field!r} must be a string, got {kind}")
  return value


def is_parquet(path: str | Path) -> bool:
  return str(path).endswith(".parquet")


def _parquet_rows(path, fields: Sequence[str], batch_size: int = 8192
                  ) -> Iterator[tuple[int, tuple]]:
  """(row number from 1, values) of the named columns of a parquet file, streamed by record
  batch. A dotted name reaches into a struct column (`translation.so`)."""
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise DataFormatError(f"{path}: reading parquet needs pyarrow (`pip install pyarrow`, or "
                          "`pip install -e '.[ciral]'`)") from None
  try:
    parquet = pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises several types for a file that is not parquet
    raise DataFormatError(f"{path}: not a readable parquet file ({e})") from None
  names = parquet.schema_arrow.names
  top = list(dict.fromkeys(f.split(".")[0] for f in fields))
  missing = [f for f in fields if f.split(".")[0] not in names]
  if missing:
    raise DataFormatError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
  number = 0
  for batch in parquet.iter_batches(batch_size=batch_size, columns=top):
    columns = {name: batch.column(name).to_pylist() for name in top}
    for i in range(batch.num_rows):
      number += 1
      values = []
      for field in fields:
        head, *rest = field.split(".")
        value = columns[head][i]
        for part in rest:
          if not isinstance(value, dict) or part not in value:
            raise DataFormatError(f"{path}: row {number}: no field {field!r}")
          value = value[part]
        values.append(value)
      yield number, tuple(values)


def iter_pairs(path: str | Path, fields: Sequence[str]) -> Iterator[tuple[str, ...]]:
  """Rows of `len(fields)` texts, streamed from TSV (columns in that order), JSONL (named
  fields) or parquet (named columns; dotted names reach into struct columns).

  A TSV may have more columns than needed (the rest is ignored, e.g. a trailing id); every
  needed text must be a non-empty string. A TSV whose first column holds ids (every value of
  its first rows a single token with a digit) is refused: ids would be trained on as text.
  A first line naming the columns (`ny<TAB>en`, `src<TAB>tgt`, the field names) is skipped,
  with a note. Errors name the file and line (parquet: row).
  """
  found = False
  if is_parquet(path):
    for number, values in _parquet_rows(path, fields):
      for field, value in zip(fields, values):
        if not isinstance(value, str):
          kind = "null" if value is None else type(value).__name__
          raise DataFormatError(f"{path}: row {number}: column {field!r} must be a string, got "
                                f"{kind}")
        if not value.strip():
          raise DataFormatError(f"{path}: row {number}: empty {field}")
      found = True
      yield tuple(v.strip() for v in values)
  else:
    first = []  # the first rows of a TSV, held back until they pass the id check
    for index, (number, line) in enumerate(text_lines(path)):
      if is_jsonl(path):
        record = json_record(path, number, line)
        texts = tuple(_json_text(path, number, record, f) for f in fields)
      else:
        parts = line.split("\t")
        if index == 0 and _is_header(path, number, parts, fields):
          continue
        if len(parts) < len(fields):
          raise DataFormatError(f"{path}:{number}: expected {len(fields)} tab-separated "
                                f"columns ({', '.join(fields)}), got {len(parts)}")
        texts = tuple(parts[:len(fields)])
      for field, text in zip(fields, texts):
        if not text.strip():
          raise DataFormatError(f"{path}:{number}: empty {field}")
      row = tuple(t.strip() for t in texts)
      found = True
      if is_jsonl(path):
        yield row
        continue
      if len(first) < _ID_CHECK_ROWS:
        first.append((number, row))
        if len(first) < _ID_CHECK_ROWS:
          continue
        _check_not_ids(path, fields, first)
        yield from (r for _, r in first)
      else:
        yield row
    if 0 < len(first) < _ID_CHECK_ROWS:
      _check_not_ids(path, fields, first)
      yield from (r for _, r in first)
  if not found:
    raise DataFormatError(f"{path}: no rows")


def _check_not_ids(path, fields, first: list[tuple[int, tuple[str, ...]]]) -> None:
  if all(_ID_LIKE.match(row[0]) for _, row in first):
    raise DataFormatError(
        f"{path}:{first[0][0]}: the first column looks like ids ({first[0][1][0]!r}, ...), not "
        f"{fields[0]} text; the columns must be {', '.join(fields)} in this order (extra "
        "columns such as ids go last)")


# A bitext whose student column looks like the teacher's language: at least this share of its
# words are whole pieces of the teacher's vocabulary (English Bible verses: 92%, their
# Chichewa translations: 12%, all-MiniLM-L6-v2), or at least this share of pairs are the same
# text on both sides.
TEACHER_LIKE_WORDS = 0.6
SAME_TEXT_PAIRS = 0.5
_WORD = re.compile(r"[^\W\d_]+")


def _known_share(texts: Sequence[str], vocabulary) -> float:
  """The share of the words of `texts` that `vocabulary` (a tokenizer's pieces) holds whole,
  as they are, lowercased, or as a SentencePiece word ("▁word")."""
  words = [w for text in texts for w in _WORD.findall(text)]
  known = sum(w in vocabulary or w.lower() in vocabulary or f"\u2581{w}" in vocabulary
              for w in words)
  return known / max(len(words), 1)


def student_language_warning(rows: Iterable[Sequence[str]], vocabulary) -> str | None:
  """What is wrong when the student column of (student, teacher) `rows` (a sample) looks like
  the teacher's language, with the numbers -- most of its words whole pieces of the teacher's
  `vocabulary`, or the same text on both sides -- else None."""
  rows = [tuple(row[:2]) for row in rows]
  if not rows:
    return None
  student = _known_share([s for s, _ in rows], vocabulary)
  same = sum(s.casefold() == t.casefold() for s, t in rows) / len(rows)
  if student < TEACHER_LIKE_WORDS and same < SAME_TEXT_PAIRS:
    return None
  teacher = _known_share([t for _, t in rows], vocabulary)
  return (f"the student column looks like the teacher's language: in the first {len(rows)} "
          f"pairs, {student:.0%} of its words are whole words of the teacher's vocabulary (the "
          f"teacher column: {teacher:.0%}) and {same:.0%} of the pairs are the same text on "
          "both sides. Are the columns swapped? The student's language comes first in a TSV "
          "(JSONL, parquet: data.student_field)")


def read_pairs(path: str | Path, fields: Sequence[str]) -> list[tuple[str, ...]]:
  """All rows of `iter_pairs(path, fields)`, in memory (small files; training streams)."""
  return list(iter_pairs(path, fields))


class FileRows:
  """The rows of a training file (`iter_pairs`), at most `limit` (0: all), read as a stream
  whenever they are needed: a few bytes a row stay in memory, never the text.

  `longest_chars()` reads the file once (checking every row) and is remembered; `rows(keep)`
  streams the rows whose index `keep` holds; `fingerprint` identifies the content.
  """

  def __init__(self, path: str | Path, fields: Sequence[str], *, limit: int = 0,
               fingerprint: str = ""):
    self.path, self.fields, self.limit = Path(path), tuple(fields), limit
    self.fingerprint = fingerprint
    self._chars: np.ndarray | None = None

  def _iter(self) -> Iterator[tuple[str, ...]]:
    rows = iter_pairs(self.path, self.fields)
    return itertools.islice(rows, self.limit) if self.limit else rows

  def longest_chars(self) -> np.ndarray:
    """int32 `[rows]`: each row's longest text in characters."""
    if self._chars is None:
      self._chars = np.fromiter((max(map(len, row)) for row in self._iter()), np.int32)
    return self._chars

  def __len__(self) -> int:
    return len(self.longest_chars())

  def rows(self, keep: np.ndarray | None = None) -> Iterator[tuple[str, ...]]:
    """The rows (in file order) whose index is in `keep` (sorted int array; None: all)."""
    if keep is None:
      yield from self._iter()
      return
    keep = np.asarray(keep, np.int64)
    if not len(keep):
      return
    wanted, last = 0, int(keep[-1])
    for index, row in enumerate(self._iter()):
      if index == keep[wanted]:
        yield row
        wanted += 1
        if index == last:
          return


def rows_digest(rows: Iterable[Sequence[str]]) -> str:
  """A digest of rows of texts, in order."""
  digest = hashlib.sha256()
  for row in rows:
    digest.update("\t".join(row).encode())
    digest.update(b"\n")
  return digest.hexdigest()


class ListRows:
  """`FileRows`' interface over rows already in memory (a hub dataset, code-switched rows);
  the fingerprint defaults to their digest."""

  def __init__(self, rows: Sequence[tuple[str, ...]], fingerprint: str = ""):
    self._rows, self.fingerprint = rows, fingerprint or rows_digest(rows)
    self.fields = tuple(f"column{i}" for i in range(len(rows[0]) if rows else 0))

  def longest_chars(self) -> np.ndarray:
    return np.fromiter((max(map(len, row)) for row in self._rows), np.int32,
                       count=len(self._rows))

  def __len__(self) -> int:
    return len(self._rows)

  def rows(self, keep: np.ndarray | None = None) -> Iterator[tuple[str, ...]]:
    if keep is None:
      yield from self._rows
    else:
      yield from (self._rows[int(i)] for i in keep)


def read_hf_dataset(name: str, fields: Sequence[str], *, config: str | None = None,
                    split: str = "train", limit: int = 0,
                    revision: str = "") -> list[tuple[str, ...]]:
  """Rows from a Hugging Face dataset at `revision` (a commit; "": the default branch), read
  from its data files, never by running a loading script of the repository (needs the
  `datasets` package, the `hf_dataset` extra, and the hub or its cache).

  `fields` may name nested values with dots, e.g. `translation.so` for NLLB-style rows.
  """
  try:
    import datasets
  except ImportError:
    raise RuntimeError(f"reading the Hugging Face dataset {name!r} needs `datasets`: "
                       "pip install -e '.[hf_dataset]'") from None
  try:
    rows = datasets.load_dataset(name, config or None, split=split, streaming=bool(limit),
                                 revision=revision or None, trust_remote_code=False)
  except Exception as e:
    raise RuntimeError(f"dataset {name!r} (config {config!r}, split {split!r}) is not "
                       f"available: {type(e).__name__}: {e}. With no internet, download it "
                       "elsewhere and point the config at TSV/JSONL files instead.") from None

  def get(row, dotted):
    for part in dotted.split("."):
      row = row[part]
    return str(row).strip()

  out = []
  for i, row in enumerate(rows):
    if limit and i >= limit:
      break
    out.append(tuple(get(row, f) for f in fields))
  return out


def _as_text(path, where, field: str, value) -> str:
  """A text value of a row being cleaned: a missing text (null) counts as empty."""
  if value is None or isinstance(value, str):
    return value or ""
  raise DataFormatError(f"{path}:{where}: field {field!r} must be a string, got "
                        f"{type(value).__name__}")


def iter_raw_pairs(paths: Iterable[str | Path], fields: Sequence[str]
                   ) -> Iterator[tuple[str, str]]:
  """(student, teacher) texts of every row of bitext files, in order, as they are (null and
  empty texts as ""): the input of `clean_pairs`. Malformed files raise `DataFormatError`."""
  for path in paths:
    if is_parquet(path):
      for number, values in _parquet_rows(path, fields):
        yield tuple(_as_text(path, f"row {number}", f, v) for f, v in zip(fields, values))
    elif is_jsonl(path):
      for number, line in text_lines(path):
        record = json_record(path, number, line)
        for field in fields:
          if field not in record:
            raise DataFormatError(f"{path}:{number}: missing field {field!r}")
        yield tuple(_as_text(path, number, f, record[f]) for f in fields)
    else:
      for index, (number, line) in enumerate(text_lines(path)):
        parts = line.split("\t")
        if index == 0 and _is_header(path, number, parts, fields):
          continue
        if len(parts) < len(fields):
          raise DataFormatError(f"{path}:{number}: expected {len(fields)} tab-separated "
                                f"columns ({', '.join(fields)}), got {len(parts)}")
        yield tuple(parts[:len(fields)])


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
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
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


def _current_build(directory: Path) -> dict | None:
  """The manifest of a complete build of this version in `directory`, or None."""
  try:
    manifest = json.loads((directory / "manifest.json").read_text())
  except (OSError, ValueError):
    return None
  return manifest if isinstance(manifest, dict) and manifest.get("version") == HELDOUT_VERSION \
      else None


def _publish(tmp: Path, directory: Path) -> dict | None:
  """Renames the finished build `tmp` to `directory`. Where another process put a current
  build there first, that one stays (its manifest is returned, `tmp` removed); an older or
  broken one is moved aside, then deleted, never checked and deleted in two steps. None once
  `tmp` is in place."""
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
