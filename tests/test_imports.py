"""The package's import graph: no cycles (function-level imports included), and the library
layers load without the training stack above them."""

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "optical_jax"


def _module_name(path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its body."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
          anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
      else:
        continue
      edges |= {t for t in targets if t in modules and t != name}
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert "optical_jax.training.loop" in graph and graph["optical_jax.training.loop"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
  assert find_cycle(graph) == ["a", "b", "c", "a"]


def _loaded_after(statement: str) -> set[str]:
  code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=ROOT).stdout
  return set(out.split())


@pytest.mark.slow
def test_the_losses_pull_in_no_training_stack():
  loaded = _loaded_after("import optical_jax.losses")
  # (optax and flax come with ott-jax.)
  assert not {m for m in loaded if m.startswith(("transformers", "orbax",
                                                 "optical_jax.training", "optical_jax.models",
                                                 "tensorboardX"))}


def test_the_scores_pull_in_neither_ott_nor_a_model_stack():
  loaded = _loaded_after("import optical_jax.scoring")
  assert not {m for m in loaded if m.split(".")[0] in ("transformers", "orbax", "torch", "ott")}


def test_evaluating_a_checkpoint_does_not_import_the_train_loop():
  loaded = _loaded_after("import optical_jax.training.checkpoints, "
                         "optical_jax.evaluation.collections, optical_jax.models.export")
  assert "optical_jax.training.loop" not in loaded
  assert "optical_jax.training.step" not in loaded


# The package's layers, lowest first, by folder of optical_jax/ ("" is its top level: the maths
# and the config): a module may import from its own layer and those below, never from above
# (docs/architecture.md).
LAYERS = ("files", "runtime", "", "config", "models", "evaluation", "data", "adaptation",
          "training", "experiments", "cli")


def layer_of(module: str) -> int:
  parts = module.split(".")
  folder = parts[1] if len(parts) > 2 or (PACKAGE / parts[1]).is_dir() else ""
  if folder not in LAYERS:
    raise AssertionError(f"{module}: optical_jax/{folder}/ is in no layer of "
                         "tests/test_imports.LAYERS")
  return LAYERS.index(folder)


def _layer_name(index: int) -> str:
  return LAYERS[index] or "core"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return sorted(f"{a} ({_layer_name(layer_of(a))}) imports {b} ({_layer_name(layer_of(b))})"
                for a, edges in graph.items() for b in edges
                if a != "optical_jax" and b != "optical_jax" and layer_of(b) > layer_of(a))


def test_no_module_imports_from_a_higher_layer():
  graph = import_graph()
  assert "optical_jax.adaptation.pipeline" in graph["optical_jax.training.student_init"]
  assert upward_imports(graph) == []


def test_the_layer_check_finds_an_upward_import():
  graph = {"optical_jax.models.student": {"optical_jax.adaptation.pipeline"},
           "optical_jax.adaptation.pipeline": set()}
  assert upward_imports(graph) == [
      "optical_jax.models.student (models) imports optical_jax.adaptation.pipeline (adaptation)"]


def test_every_folder_of_the_package_is_a_layer():
  folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
  assert folders == set(LAYERS) - {""}
