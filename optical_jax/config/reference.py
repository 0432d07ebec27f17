"""The field reference at the end of `docs/configuration.md`, generated from the schema
(`optical_jax/config/schema.py`): every field of every group, the optional ones included, with
its default, the values it takes and its doc; the fields of a collection and of a demo table;
the losses. It goes below the marker line `MARKER` (the guide above it is written by hand).
Regenerate it with

  python -m optical_jax.config.reference docs/configuration.md

(`tests/test_config_reference.py` fails when the file and the schema drift apart.)
"""

from __future__ import annotations

import json
from pathlib import Path

from optical_jax.config import GROUPS, LOSS_TABLE, RECORDS, Field

MARKER = ("<!-- Generated below from optical_jax/config/schema.py by `python -m "
          "optical_jax.config.reference docs/configuration.md`: edit the schema there. -->")


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def _row(name: str, field: Field) -> str:
  default = ("required" if field.required
             else f"`{_cell(json.dumps(field.default, ensure_ascii=False))}`")
  return f"| `{name}` | {default} | {_cell(field.value_check.what)} | {_cell(field.doc)} |"


def _table(rows: list[str]) -> list[str]:
  return ["| field | default | values | what it does |", "|---|---|---|---|", *rows, ""]


def reference() -> str:
  """The reference as markdown."""
  lines = ["## Every field", "",
           "Every field a config may have, its default, the values it takes and what it does. "
           "A config file starts from `optical_jax.config.base_config()`, which holds every "
           "group but the optional ones, and changes fields; `--config.GROUP.FIELD=VALUE` "
           "overrides one on the command line. `validate` checks each field as the values "
           "column says, then the fields against each other.", ""]
  for group in GROUPS:
    title = f"`{group.name}`" if group.name else "The top level"
    lines += [f"### {title}{' (optional)' if group.optional else ''}", "", f"{group.doc}."
              + (f" A config has this group when it sets it, from its defaults: `c.{group.name} "
                 f"= optional_group(\"{group.name}\", FIELD=VALUE, ...)` (the fields without a "
                 "default are given); then every field is checked." if group.optional else ""),
              ""]
    lines += _table([_row(group.dotted(f), f) for f in group.fields])
  for record in RECORDS:
    lines += [f"### A {record.name}'s fields", "",
              f"Each {record.name} is a plain dict; the required fields must be non-empty, the "
              "others may be left out. A key the list below does not name is refused.", ""]
    lines += _table([_row(f.name, f) for f in record.fields])
  lines += ["### Losses", "", "The values of `loss`, each the terms it adds up; only a loss "
            "whose value for a pair depends on that pair alone may split batches into "
            "microbatches (`train.microbatch_size`; OT without `ot.center`).", "",
            "| loss | terms | microbatches | what it is |", "|---|---|---|---|"]
  lines += [f"| `{name}` | {', '.join(loss.terms)} | {'yes' if loss.per_example else 'no'} | "
            f"{_cell(loss.doc)} |" for name, loss in LOSS_TABLE.items()]
  return "\n".join(lines) + "\n"


def document(current: str) -> str:
  """`current` (the text of docs/configuration.md: the guide, then `MARKER`) with everything
  below `MARKER` replaced by the reference (a text without it is all guide)."""
  return f"{current.partition(MARKER)[0]}{MARKER}\n\n{reference()}"


if __name__ == "__main__":
  import sys
  from optical_jax.files.fileio import write_text_atomic
  path = Path(sys.argv[1])
  # Whole or not at all: the guide above MARKER is the user's text.
  write_text_atomic(path, document(path.read_text() if path.is_file() else ""))
