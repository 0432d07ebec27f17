"""The field reference at the end of `docs/configuration.md`: every field of `base_config()`
with its default and the comment written beside it in `optical_jax/config.py`, one table per
group, below the marker line `MARKER` (the guide above it is written by hand). Regenerate it
with

  python -m optical_jax.config_reference docs/configuration.md

(`tests/test_config.py` fails when the file and the config drift apart.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from optical_jax import config as config_module
from optical_jax.config import base_config, flat_fields

MARKER = ("<!-- Generated below from optical_jax/config.py by `python -m "
          "optical_jax.config_reference docs/configuration.md`: edit the comments there. -->")
_FIELD = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")


def field_comments() -> dict[str, str]:
  """`{"group.field": comment}` from `base_config`'s source: the comment lines just above a
  field's assignment and the one beside it, joined."""
  source = Path(config_module.__file__).read_text().splitlines()
  start = next(i for i, line in enumerate(source) if line.startswith("def base_config"))
  comments, pending = {}, []
  for line in source[start + 1:]:
    if line and not line.startswith(" "):
      break  # the end of the function
    stripped = line.strip()
    if stripped.startswith("#"):
      pending.append(stripped.lstrip("#").strip())
      continue
    match = _FIELD.match(line)
    if match and "ConfigDict()" not in match.group(2):
      beside = match.group(3) or ""
      comments[match.group(1)] = " ".join([*pending, beside]).strip()
    pending = []
  return comments


def reference() -> str:
  """The reference as markdown."""
  comments = field_comments()
  fields = flat_fields(base_config().to_dict())
  groups: dict[str, list[str]] = {}
  for name in fields:
    groups.setdefault(name.rpartition(".")[0], []).append(name)
  lines = ["## Every field", "",
           "Every field of `optical_jax.config.base_config()`, its default and what it does "
           "(the comments in `optical_jax/config.py`). A config file starts from "
           "`base_config()` and changes fields; `--config.GROUP.FIELD=VALUE` overrides one on "
           "the command line.", ""]
  for group, names in groups.items():
    lines += [f"### `{group or 'top level'}`", "", "| field | default | what it does |",
              "|---|---|---|"]
    for name in names:
      default = json.dumps(fields[name], ensure_ascii=False).replace("|", "\\|")
      text = comments.get(name, "").replace("|", "\\|")
      lines.append(f"| `{name}` | `{default}` | {text} |")
    lines.append("")
  return "\n".join(lines)


def document(current: str) -> str:
  """`current` (the text of docs/configuration.md: the guide, then `MARKER`) with everything
  below `MARKER` replaced by the reference (a text without it is all guide)."""
  return f"{current.partition(MARKER)[0]}{MARKER}\n\n{reference()}"


if __name__ == "__main__":
  import sys
  from optical_jax.fileio import write_text_atomic
  path = Path(sys.argv[1])
  # Whole or not at all: the guide above MARKER is the user's text.
  write_text_atomic(path, document(path.read_text() if path.is_file() else ""))
