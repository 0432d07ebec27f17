"""The on-disk layout: `optical_jax.files.layout` names every path of a workdir, of the cache and
of the demo's directory, and no other module spells one of those names into a path."""

import ast
from pathlib import Path

from optical_jax.files.layout import CacheDir, DemoDir, Workdir
from tests.helpers import ROOT

LAYOUT = ROOT / "optical_jax" / "files" / "layout.py"

# Where a name means something else: a Hugging Face checkpoint's own `config.json`, a
# teacher cache entry's own lock file.
OTHER_MEANING = {
    ("optical_jax/models/hf_checkpoint.py", "config.json"),
    ("optical_jax/models/export.py", "config.json"),
    ("benchmarks/common.py", "config.json"),
    ("benchmarks/data_scale.py", "config.json"),
    ("benchmarks/eval_pipeline.py", "config.json"),
    ("optical_jax/data/teacher_cache.py", ".lock"),
}


def _joined(tree: ast.AST):
  """(line, string) of each literal joined onto a path: `p / "x"`, `p.joinpath("x")`,
  `p.glob("x/*")` (both arms of a conditional included)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
      operands = [node.right]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in ("joinpath", "glob", "rglob")):
      operands = node.args
    else:
      continue
    for operand in operands:
      yield from _strings(operand)


def _strings(node: ast.AST):
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    yield node.lineno, node.value
  elif isinstance(node, ast.IfExp):
    yield from _strings(node.body)
    yield from _strings(node.orelse)


def layout_names() -> set[str]:
  """The names layout.py joins onto a path, or declares below a root (`_Below("name")`)."""
  tree = ast.parse(LAYOUT.read_text())
  below = {node.args[0].value for node in ast.walk(tree)
           if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_Below"}
  return below | {value for _, value in _joined(tree)}


def spelled_outside(sources: dict[str, str], names: set[str]) -> list[str]:
  """`file:line: name` for each of `names` joined onto a path in `sources` ({file: text})."""
  found = []
  for relative, text in sources.items():
    for line, value in _joined(ast.parse(text, relative)):
      for part in value.split("/"):
        if part in names and (relative, part) not in OTHER_MEANING:
          found.append(f"{relative}:{line}: {part!r}")
  return found


def _sources() -> dict[str, str]:
  files = [*(ROOT / "optical_jax").rglob("*.py"), ROOT / "train.py", ROOT / "eval.py",
           *(ROOT / "benchmarks").rglob("*.py")]
  return {p.relative_to(ROOT).as_posix(): p.read_text() for p in files
          if p != LAYOUT}


def test_no_module_spells_a_workdir_or_cache_path():
  names = layout_names()
  assert {"checkpoints", "best", "config.json", ".lock", "teacher_tokens", "xla"} <= names
  assert spelled_outside(_sources(), names) == []


def test_the_check_finds_a_spelled_path():
  source = ('def f(workdir, cache, which, batch):\n'
            '  a = workdir / "checkpoints" / "7"\n'
            '  b = cache.joinpath("teacher_tokens")\n'
            '  c = workdir / ("best" if which == "best" else "runs")\n'
            '  d = batch["tokens"], which == "xla"  # not paths\n'
            '  return [*workdir.glob("eval/step_*"), a, b, c, d, workdir / "config.json"]\n')
  found = spelled_outside({"optical_jax/planted.py": source,
                           "optical_jax/models/export.py": 'p = d / "config.json"\n'},
                          layout_names())
  assert sorted(found) == sorted(f"optical_jax/planted.py:{line}: {name!r}" for line, name in [
      (2, "checkpoints"), (3, "teacher_tokens"), (4, "best"), (4, "runs"), (6, "eval"),
      (6, "config.json")])


def test_the_workdir_paths():
  w = Workdir("/runs/a")
  assert w.root == Path("/runs/a")
  assert (w.checkpoints, w.best, w.config, w.metrics, w.tensorboard) == (
      Path("/runs/a/checkpoints"), Path("/runs/a/best"), Path("/runs/a/config.json"),
      Path("/runs/a/metrics.jsonl"), Path("/runs/a/tensorboard"))
  assert (w.student_init, w.lock, w.library_log, w.corrupt_checkpoints, w.curves) == (
      Path("/runs/a/student_init"), Path("/runs/a/.lock"), Path("/runs/a/logs/libraries.log"),
      Path("/runs/a/corrupt_checkpoints"), Path("/runs/a/curves.png"))
  results = w.results(12)
  assert (results.root, results.summary, results.per_query, results.run("toy")) == (
      Path("/runs/a/eval/step_12"), Path("/runs/a/eval/step_12/eval.json"),
      Path("/runs/a/eval/step_12/eval_per_query.json"), Path("/runs/a/eval/step_12/runs/toy.trec"))


def test_the_evaluated_steps_are_those_with_a_summary(tmp_path):
  w = Workdir(tmp_path)
  assert w.evaluated_steps() == []
  for step in (3, 10):
    w.results(step).root.mkdir(parents=True)
    w.results(step).summary.write_text("{}")
  w.results(20).root.mkdir()  # an evaluation that did not finish
  (w.eval / "step_x").mkdir()
  assert sorted(w.evaluated_steps()) == [3, 10]


def test_the_cache_paths(monkeypatch):
  monkeypatch.setenv("HOME", "/home/me")
  c = CacheDir("~/.cache/optical_jax")
  root = Path("/home/me/.cache/optical_jax")
  assert c.root == root
  assert {name: getattr(c, name) for name in (
      "tokens", "teacher_tokens", "embeddings", "xla", "bitext", "bible", "adaptation",
      "benchmark_checkpoints", "fingerprints")} == {
      "tokens": root / "tokens", "teacher_tokens": root / "teacher_tokens",
      "embeddings": root / "embeddings", "xla": root / "xla", "bitext": root / "bitext",
      "bible": root / "bible", "adaptation": root / "adaptation",
      "benchmark_checkpoints": root / "benchmark_checkpoints",
      "fingerprints": root / "fingerprints.json"}
  assert (c.corpus.root, c.corpus.scans, c.corpus.tokens) == (
      root / "corpus", root / "corpus/scans", root / "corpus/tokens")


def test_the_demo_paths():
  d = DemoDir("/runs/demo")
  assert (d.report, d.figure) == (Path("/runs/demo/results.md"), Path("/runs/demo/dev_map.png"))
  assert d.run("ot+contrastive") == Workdir("/runs/demo/ot_contrastive")
  assert d.run("mse", seed=1).checkpoints == Path("/runs/demo/mse-seed1/checkpoints")
