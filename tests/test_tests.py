"""The tests themselves: each one asserts something that could fail."""

import ast
from pathlib import Path

TESTS = Path(__file__).parent
# Calls that fail a test by themselves (pytest's, numpy's and the helpers' `assert_*`).
CHECKS = {"raises", "warns", "fail", "deprecated_call"}


def _name(call: ast.Call) -> str:
  function = call.func
  return (function.attr if isinstance(function, ast.Attribute) else
          function.id if isinstance(function, ast.Name) else "")


def _checks(function: ast.AST, helpers: set[str]) -> bool:
  """Whether `function`'s body asserts: an `assert`, `pytest.raises` (and the like), an
  `assert_*` call, or a call to one of `helpers` (functions of tests/ that do)."""
  for node in ast.walk(function):
    if isinstance(node, ast.Assert):
      return True
    if isinstance(node, ast.Call):
      name = _name(node)
      if name in CHECKS or name.startswith("assert") or name in helpers:
        return True
  return False


def _functions() -> dict[Path, list[ast.FunctionDef]]:
  return {path: [node for node in ast.walk(ast.parse(path.read_text(), str(path)))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
          for path in sorted(TESTS.rglob("*.py"))}


def assertionless_tests() -> list[str]:
  """`path:line name` of every test function in tests/ that asserts nothing."""
  functions = _functions()
  # Helpers that assert, by name: a helper that calls one asserts too (to a fixed point).
  helpers: set[str] = set()
  while True:
    found = {f.name for fs in functions.values() for f in fs
             if not f.name.startswith("test") and _checks(f, helpers)}
    if found <= helpers:
      break
    helpers |= found
  return [f"{path.relative_to(TESTS.parent)}:{f.lineno} {f.name}"
          for path, fs in functions.items() if path.name.startswith("test_")
          for f in fs if f.name.startswith("test") and not _checks(f, helpers)]


def test_every_test_asserts_something():
  assert assertionless_tests() == []


def test_the_scan_finds_a_test_that_asserts_nothing(tmp_path, monkeypatch):
  (tmp_path / "helpers.py").write_text("def check(x):\n  assert x\n\ndef run(x):\n  return x\n")
  (tmp_path / "test_x.py").write_text(
      "import pytest\n\n"
      "def test_runs():\n  run(1)\n\n"
      "def test_checks():\n  check(run(1))\n\n"
      "def test_raises():\n  with pytest.raises(ValueError):\n    run(1)\n\n"
      "def test_compares():\n  np.testing.assert_array_equal(run(1), 1)\n\n"
      "class TestGroup:\n  def test_nothing(self):\n    run(2)\n")
  monkeypatch.setitem(globals(), "TESTS", tmp_path)
  assert assertionless_tests() == [f"{tmp_path.name}/test_x.py:3 test_runs",
                                   f"{tmp_path.name}/test_x.py:17 test_nothing"]
