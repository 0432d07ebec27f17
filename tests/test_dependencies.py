"""Every module the tests and benchmarks import is declared: the standard library, this
repository, or a distribution that `pyproject.toml` (dependencies and the test, demo and ciral
extras) or `.ci/run` (by name) installs. A fresh virtual environment then has all of them."""

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from tests.helpers import ROOT

EXTRAS = ("test", "demo", "ciral")
LOCAL = {"optical_jax", "tests", "benchmarks", "conftest"}
# Imported only where installed, the table saying "n/a" otherwise; never needed by a test.
OPTIONAL = {"ot": "POT, the reference loop of benchmarks/losses.py"}


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
  return _normalise(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def declared_distributions() -> set[str]:
  """Distributions pyproject.toml declares (dependencies, EXTRAS) and .ci/run installs."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  names = {_requirement_name(r) for r in project["dependencies"]}
  for extra in EXTRAS:
    names |= {_requirement_name(r) for r in project["optional-dependencies"].get(extra, [])}
  for line in (ROOT / ".ci" / "run").read_text().splitlines():
    if "pip install" in line and not line.lstrip().startswith("#"):
      for word in line.split("pip install", 1)[1].split():
        if not word.startswith(("-", '"', "'", ".")):
          names.add(_requirement_name(word))
  return names


def imported_modules(path: Path) -> dict[str, int]:
  """Top-level names of the absolute imports anywhere in `path` -> the first line."""
  found = {}
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
      names = [node.module]
    else:
      continue
    for name in names:
      found.setdefault(name.split(".")[0], node.lineno)
  return found


def undeclared_imports(files, declared: set[str], local: set[str]) -> list[str]:
  """`file:line: module` for each import that is neither standard library, local, nor from a
  distribution in `declared` (one no installed distribution provides: the distribution of
  the module's name)."""
  providers = metadata.packages_distributions()
  bad = []
  for path in files:
    for module, line in sorted(imported_modules(path).items()):
      if (module in sys.stdlib_module_names or module in local or module in OPTIONAL
          or module == "__future__"):
        continue
      installed = {_normalise(d) for d in providers.get(module, [])}
      # Not installed here (an extra's module): the distribution of its own name.
      if not (installed or {_normalise(module)}) & declared:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        bad.append(f"{where}:{line}: {module} (from "
                   f"{', '.join(sorted(installed)) or 'nothing installed'})")
  return bad


def _sources():
  return sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def _local_names() -> set[str]:
  # Scripts in benchmarks/ import their siblings (`from common import ...`).
  return LOCAL | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}


def test_every_test_and_benchmark_import_is_declared():
  declared = declared_distributions()
  assert {"jax", "pytest", "torch"} <= declared
  assert undeclared_imports(_sources(), declared, _local_names()) == []


def test_an_undeclared_import_is_named_with_its_file_and_line(tmp_path):
  script = tmp_path / "uses_torch.py"
  script.write_text("import os\n\ndef f():\n  from torch import nn\n  import numpy\n")
  assert undeclared_imports([script], {"numpy"}, set()) == [
      f"{script}:4: torch (from torch)"]
  assert undeclared_imports([script], {"numpy", "torch"}, set()) == []
  missing = tmp_path / "uses_nothing_installed.py"
  missing.write_text("import no_such_distribution_anywhere\n")
  assert undeclared_imports([missing], {"numpy"}, set()) == [
      f"{missing}:1: no_such_distribution_anywhere (from nothing installed)"]


def test_every_package_import_is_declared_and_datasets_is_bounded():
  # The package's optional imports (datasets for config.data.hf_dataset, pyarrow, the Bible
  # packages) come from an extra; torch (pytorch_model.bin) from .ci/run.
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  declared = declared_distributions() | {_requirement_name(r) for r in extras["hf_dataset"]}
  assert undeclared_imports(sorted((ROOT / "optical_jax").rglob("*.py")), declared,
                            {"optical_jax"}) == []
  (datasets,) = [r for r in extras["hf_dataset"] if _requirement_name(r) == "datasets"]
  assert ">=" in datasets and "<" in datasets.replace("<=", "")  # a floor and a ceiling
