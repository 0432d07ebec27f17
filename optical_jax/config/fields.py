"""How a config field is declared: `Field` (name, default, check, one-line doc), the fields of
a group (`Group`) or of one dict in a list of them (`Record`: a collection), and `Check`, what a
value must be, said once for the error and for docs/configuration.md alike."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any, Callable


class _Required:
  def __repr__(self):
    return "REQUIRED"


# The default of a field that has none: the config must set it.
REQUIRED = _Required()


@dataclasses.dataclass(frozen=True)
class Check:
  """What a field's value must be: `what` completes "config.FIELD must be ..." (errors, and the
  reference's "values" column); `holds(value)` says whether `value` is. `pins` names the field
  whose hub repository a revision field pins (`revision_of`)."""

  what: str
  holds: Callable[[Any], bool]
  pins: str = ""

  def problem(self, value, field: str) -> str | None:
    """The error for `value` of the dotted `field`, None when it holds."""
    if self.holds(value):
      return None
    return f"config.{field} must be {self.what}, got {value!r}"


def _integer(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def one_of(choices, what: str = "") -> Check:
  return Check(what or f"one of {tuple(choices)}", lambda v: v in tuple(choices))


positive_int = Check("a positive integer", lambda v: _integer(v) and v > 0)
non_negative_int = Check("a non-negative integer", lambda v: _integer(v) and v >= 0)
positive_number = Check("a positive finite number", lambda v: _number(v) and v > 0)
non_negative_number = Check("a non-negative finite number", lambda v: _number(v) and v >= 0)
non_empty_string = Check("a non-empty string", lambda v: isinstance(v, str) and bool(v))
integer = Check("an integer", _integer)


def in_range(low: float, high: float, *, closed: str = "[]", note: str = "") -> Check:
  """A number in the interval from `low` to `high`, its ends as `closed` writes them ("[)":
  low included, high not)."""
  above = (lambda v: v >= low) if closed[0] == "[" else (lambda v: v > low)
  below = (lambda v: v <= high) if closed[1] == "]" else (lambda v: v < high)
  what = f"in {closed[0]}{low:g}, {high:g}{closed[1]}" + (f" ({note})" if note else "")
  return Check(what, lambda v: _number(v) and above(v) and below(v))


def sequence_of(item: Check, *, non_empty: bool = False) -> Check:
  """A list or tuple whose every item is as `item` says."""
  what = f"a {'non-empty ' if non_empty else ''}list or tuple, each item {item.what}"
  return Check(what, lambda v: isinstance(v, (list, tuple)) and (bool(v) or not non_empty)
               and all(item.holds(x) for x in v))


# What a field without a check must be, by its default's type.
_TYPES = {bool: Check("True or False", lambda v: isinstance(v, bool)),
          int: integer,
          float: Check("a number", lambda v: isinstance(v, (int, float))
                       and not isinstance(v, bool)),
          str: Check("a string", lambda v: isinstance(v, str)),
          tuple: Check("a list or tuple", lambda v: isinstance(v, (list, tuple))),
          list: Check("a list or tuple", lambda v: isinstance(v, (list, tuple)))}


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its `name` in its group, its `default` (`REQUIRED`: none, the config
  sets it), what it does (`doc`, one line), and what its value must be (`check`; None: of the
  default's type). `any_type`: the field holds values of several types (in base_config, a
  field of type object). `resumable`: a resumed run may change it, since it does not change
  what is trained."""

  name: str
  default: Any
  doc: str
  check: Check | None = None
  any_type: bool = False
  resumable: bool = False

  @property
  def required(self) -> bool:
    return self.default is REQUIRED

  @property
  def value_check(self) -> Check:
    return self.check or _TYPES[type(self.default)]


@dataclasses.dataclass(frozen=True)
class Record:
  """The fields of each dict in a list field (a collection of `eval.collections`); those
  without a default (`REQUIRED`) must be there and non-empty, the others may be left out."""

  name: str  # what one is, in errors and in the reference: "collection"
  fields: tuple[Field, ...]
  key: str = "name"  # the field naming one in errors: config.eval.collections['dev']

  def label(self, spec, index: int):
    """How errors name `spec`, the `index`th: by its key field, else by its index."""
    return spec.get(self.key, index) if hasattr(spec, "get") else index

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.fields)


@dataclasses.dataclass(frozen=True)
class Records(Check):
  """A list of dicts of `record`'s fields; its error names the dict and the field."""

  record: Record | None = None

  def problem(self, specs, field: str) -> str | None:
    if not isinstance(specs, (list, tuple)):
      return f"config.{field} must be {self.what}, got {specs!r}"
    for i, spec in enumerate(specs):
      if not isinstance(spec, Mapping) and not hasattr(spec, "keys"):
        return f"config.{field}[{i}] must be a dict of {self.record.name}'s fields, got {spec!r}"
      where = f"{field}[{self.record.label(spec, i)!r}]"
      for f in self.record.fields:
        if f.required and not spec.get(f.name):
          return f"config.{where}.{f.name} is missing"
        problem = f.value_check.problem(spec[f.name], f"{where}.{f.name}") if (
            f.name in spec) else None
        if problem:
          return problem
    return None


def records(record: Record) -> Records:
  """A list of dicts of `record`'s fields (unknown keys are refused where fields are:
  `optical_jax.config.check_fields`)."""
  check = Records(f"a list of {record.name}s", lambda v: check.problem(v, "") is None,
                  record=record)
  return check


@dataclasses.dataclass(frozen=True)
class Group:
  """A config group (`config.NAME`; "" for the top level): its fields and what it is for.
  An `optional` group is absent from `base_config()`; a config that has it has all of its
  fields (`optional_group` builds it). Every field of a `resumable` group is."""

  name: str
  doc: str
  fields: tuple[Field, ...]
  optional: bool = False
  resumable: bool = False

  def dotted(self, field: Field) -> str:
    return f"{self.name}.{field.name}" if self.name else field.name


def closest(name: str, valid, prefix: str = "") -> str:
  """"; did you mean PREFIXNAME?" of the valid name closest to a misspelt `name`, else ""."""
  close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
  return f"; did you mean {prefix}{close[0]}?" if close else ""
