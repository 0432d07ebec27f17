"""Reading training text: bitext pairs and (query, positive[, negative]) triples.

From TSV (columns in order), JSONL (named fields) or parquet (named columns, read with
pyarrow; one reader tells the formats apart, `_records`), or from a Hugging Face dataset.
Errors name the file and line (or parquet row); nothing here knows about configs
(`optical_jax.data.inputs` reads them); `heldout` splits a large bitext into training and
held-out pairs.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from optical_jax.files.textfiles import DataFormatError, is_jsonl, json_record, text_lines

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


def _records(path: str | Path, fields: Sequence[str]) -> Iterator[tuple[str, str, tuple]]:
  """`(where, kind, values)` of each row of a bitext file, by its format (the one place that
  tells them apart): parquet (named columns; dotted names reach into struct columns), JSONL
  (named fields, each present) or TSV (the first `len(fields)` columns; a first line naming
  them is skipped, and a first column of ids refused). `where` is "PATH:LINE" ("PATH: row N"
  in parquet), `kind` what a value is called in errors; values are as stored (JSONL and
  parquet values may be other than strings)."""
  if is_parquet(path):
    for number, values in _parquet_rows(path, fields):
      yield f"{path}: row {number}", "column", values
  elif is_jsonl(path):
    for number, line in text_lines(path):
      record = json_record(path, number, line)
      for field in fields:
        if field not in record:
          raise DataFormatError(f"{path}:{number}: missing field {field!r}")
      yield f"{path}:{number}", "field", tuple(record[f] for f in fields)
  else:
    first = []  # the first rows, held back until they pass the id check
    for index, (number, line) in enumerate(text_lines(path)):
      parts = line.split("\t")
      if index == 0 and _is_header(path, number, parts, fields):
        continue
      if len(parts) < len(fields):
        raise DataFormatError(f"{path}:{number}: expected {len(fields)} tab-separated "
                              f"columns ({', '.join(fields)}), got {len(parts)}")
      record = (f"{path}:{number}", "column", tuple(parts[:len(fields)]))
      if len(first) >= _ID_CHECK_ROWS:
        yield record
        continue
      first.append(record)
      if len(first) == _ID_CHECK_ROWS:
        _check_not_ids(fields, first)
        yield from first
    if 0 < len(first) < _ID_CHECK_ROWS:
      _check_not_ids(fields, first)
      yield from first


def _check_not_ids(fields: Sequence[str], first: list[tuple[str, str, tuple]]) -> None:
  if all(_ID_LIKE.match(values[0].strip()) for _, _, values in first):
    raise DataFormatError(
        f"{first[0][0]}: the first column looks like ids ({first[0][2][0].strip()!r}, ...), "
        f"not {fields[0]} text; the columns must be {', '.join(fields)} in this order (extra "
        "columns such as ids go last)")


def _kind(value) -> str:
  return "null" if value is None else type(value).__name__


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
  for where, kind, values in _records(path, fields):
    for field, value in zip(fields, values):
      if not isinstance(value, str):
        raise DataFormatError(f"{where}: {kind} {field!r} must be a string, got {_kind(value)}")
      if not value.strip():
        raise DataFormatError(f"{where}: empty {field}")
    found = True
    yield tuple(v.strip() for v in values)
  if not found:
    raise DataFormatError(f"{path}: no rows")


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


def iter_raw_pairs(paths: Iterable[str | Path], fields: Sequence[str]
                   ) -> Iterator[tuple[str, str]]:
  """(student, teacher) texts of every row of bitext files, in order, as they are (null and
  empty texts as ""): the input of `clean_pairs`. Malformed files raise `DataFormatError`."""
  for path in paths:
    for where, kind, values in _records(path, fields):
      for field, value in zip(fields, values):
        if value is not None and not isinstance(value, str):
          raise DataFormatError(f"{where}: {kind} {field!r} must be a string, got "
                                f"{_kind(value)}")
      yield tuple(value or "" for value in values)
