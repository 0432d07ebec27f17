"""Reading text files line by line: strict UTF-8, a leading BOM dropped, lines of at most
`MAX_LINE_BYTES`, errors naming `path:line`. Shared by the evaluation formats and the
training data readers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

PathLike = str | os.PathLike

# The longest line a topics, corpus, qrels, run or training file may have: far above any
# passage or sentence pair (a CIRAL passage is a few KB), and a bound on what one line costs
# in memory, so that a file without newlines fails at once instead of being read whole.
MAX_LINE_BYTES = 1 << 20


class DataFormatError(ValueError):
  """A malformed input file; the message starts with `path:line:`."""


def text_lines(path: PathLike) -> Iterator[tuple[int, str]]:
  """(line number, text) of each non-blank line, decoding UTF-8 strictly; a BOM that starts
  the file is dropped. A line longer than `MAX_LINE_BYTES` is an error naming it."""
  path = Path(path)
  if not path.is_file():
    raise DataFormatError(f"{path}: no such file")
  with open(path, "rb") as f:
    for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
      if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
        raise DataFormatError(f"{path}:{number}: line longer than {MAX_LINE_BYTES >> 20} MiB "
                              "(is it one record a line, with newlines between records?)")
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                              f"column {e.start + 1})") from None
      if number == 1:
        # Windows editors start UTF-8 files with a BOM; kept, it would glue itself to the
        # first id (a phantom query or document).
        text = text.removeprefix("\ufeff")
      text = text.rstrip("\r\n")
      if text.strip():
        yield number, text


def is_jsonl(path: PathLike) -> bool:
  return str(path).endswith((".jsonl", ".json"))


def json_record(path, number, text) -> dict:
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFormatError(f"{path}:{number}: invalid JSON ({e.msg})") from None
  except RecursionError:  # arrays or objects nested thousands deep: no record of ours
    raise DataFormatError(f"{path}:{number}: JSON nested too deeply to be a record") from None
  if not isinstance(record, dict):
    raise DataFormatError(f"{path}:{number}: expected a JSON object")
  return record
