"""Reading training text: bitext pairs and (query, positive[, negative]) triples.

From TSV (columns in order) or JSONL (named fields), or from a Hugging Face dataset. Errors
name the file and line; nothing here knows about configs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from optical_jax.textfiles import DataFormatError, is_jsonl, json_record, text_lines

# A first TSV column whose every value looks like this is an id column, not text.
_ID_LIKE = re.compile(r"^[\w.:/#-]*\d[\w.:/#-]*$")
_ID_CHECK_ROWS = 100


def _json_text(path, number: int, record: dict, field: str) -> str:
  if field not in record:
    raise DataFormatError(f"{path}:{number}: missing field {field!r}")
  value = record[field]
  if not isinstance(value, str):
    kind = "null" if value is None else type(value).__name__
    raise DataFormatError(f"{path}:{number}: field {field!r} must be a string, got {kind}")
  return value


def read_pairs(path: str | Path, fields: Sequence[str]) -> list[tuple[str, ...]]:
  """Rows of `len(fields)` texts from TSV (columns in that order) or JSONL (named fields).

  A TSV may have more columns than needed (the rest is ignored, e.g. a trailing id); every
  needed text must be a non-empty string. A TSV whose first column holds ids (every value a
  single token with a digit) is refused: ids would be trained on as text. Errors name the
  file and line.
  """
  rows, first_lines = [], []
  for number, line in text_lines(path):
    if is_jsonl(path):
      record = json_record(path, number, line)
      texts = tuple(_json_text(path, number, record, f) for f in fields)
    else:
      parts = line.split("\t")
      if len(parts) < len(fields):
        raise DataFormatError(f"{path}:{number}: expected {len(fields)} tab-separated columns "
                              f"({', '.join(fields)}), got {len(parts)}")
      texts = tuple(parts[:len(fields)])
      if len(first_lines) < _ID_CHECK_ROWS:
        first_lines.append(number)
    for field, text in zip(fields, texts):
      if not text.strip():
        raise DataFormatError(f"{path}:{number}: empty {field}")
    rows.append(tuple(t.strip() for t in texts))
  if not rows:
    raise DataFormatError(f"{path}: no rows")
  if first_lines and all(_ID_LIKE.match(r[0]) for r in rows[:len(first_lines)]):
    raise DataFormatError(
        f"{path}:{first_lines[0]}: the first column looks like ids ({rows[0][0]!r}, ...), not "
        f"{fields[0]} text; the columns must be {', '.join(fields)} in this order (extra "
        "columns such as ids go last)")
  return rows


def read_hf_dataset(name: str, fields: Sequence[str], *, config: str | None = None,
                    split: str = "train", limit: int = 0) -> list[tuple[str, ...]]:
  """Rows from a Hugging Face dataset (needs the `datasets` package and the hub or its cache).

  `fields` may name nested values with dots, e.g. `translation.so` for NLLB-style rows.
  """
  try:
    import datasets
  except ImportError:
    raise RuntimeError(f"reading the Hugging Face dataset {name!r} needs `pip install datasets`"
                       ) from None
  try:
    rows = datasets.load_dataset(name, config or None, split=split, streaming=bool(limit))
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
