"""notebooks/colab.ipynb, executed headless as Colab runs it: a kernel of this Python, the
parameters cell followed by an injected one with tiny settings (no install, the demo on a tiny
teacher for 2 steps, configs/so.py on the CIRAL hub-layout fixture with tiny local models)."""

import base64
import json
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT, save_tiny_bert

pytestmark = pytest.mark.slow  # every test here runs over ~5 s

NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"
HUB = ROOT / "tests" / "fixtures" / "ciral" / "hub"
KERNEL = "optical-jax-test"
TINY = ["--config.runtime.progress_bar=False", "--config.train.num_train_steps=2",
        "--config.train.warmup_steps=1", "--config.train.eval_every_steps=2",
        "--config.train.checkpoint_every_steps=2", "--config.data.max_length=16"]


def _kernelspec(directory, tmp_path):
  """A kernelspec for this interpreter in its own JUPYTER_PATH: no user state involved."""
  spec = directory / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "optical_jax tests", "language": "python",
      "env": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "JAX_PLATFORMS": "cpu",
              "IPYTHONDIR": str(tmp_path / "ipython"), "MPLBACKEND": "Agg"}}))


def _outputs(cell, kind):
  """The text of `cell`'s outputs: streams ("stream") or displayed MIME data ("text/markdown",
  "image/png")."""
  if kind == "stream":
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")
  return [o.data[kind] for o in cell.outputs
          if o.output_type in ("display_data", "execute_result") and kind in o.data]


def _cell(nb, text):
  return next(c for c in nb.cells if c.cell_type == "code" and text in c.source)


def test_colab_notebook_runs_the_demo_and_so_py_to_their_tables_and_plots(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
  parameters = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))

  teacher = save_tiny_bert(tmp_path / "teacher", seed=0)
  student = save_tiny_bert(tmp_path / "student", seed=1)
  work, cache = tmp_path / "runs", tmp_path / "cache"
  demo = [*TINY, f"--config.model.teacher={student}", f"--config.runtime.cache_dir={cache}",
          "--config.eval.max_length=16", "--config.data.limit=256",
          "--config.model.vocab_extension=32", "--config.data.alignment_pairs=64",
          # Two of the demo's rows keep the test short; test_demo.py covers all of them.
          "--config.demo.losses=('ot', 'contrastive')"]
  so = [*TINY, f"--config.ciral.bitext={HUB / 'quickmt-train.so-en'}", "--config.ciral.heldout=6",
        "--config.ciral.heldout_rate=4", f"--config.model.teacher={teacher}",
        f"--config.model.student={student}", "--config.model.dtype=float32",
        "--config.model.dropout=0.0", "--config.train.batch_size=8", "--config.eval.max_length=64",
        "--config.eval.batch_size=16", f"--config.runtime.cache_dir={cache}"]
  injected = nbformat.v4.new_code_cell(
      f"INSTALL = False\nREPO_DIR = {str(ROOT)!r}\nWORKDIR = {str(work)!r}\n"
      f"DEMO_OVERRIDES = {demo!r}\nSO_OVERRIDES = {so!r}\nRUN_SO = True\n"
      f"CIRAL_LOCAL_DIR = {str(HUB)!r}\n", metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(parameters + 1, injected)

  _kernelspec(tmp_path / "jupyter", tmp_path)
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  # A failing cell raises CellExecutionError, naming the cell and its traceback.
  NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={
      "metadata": {"path": str(tmp_path)}}).execute()
  assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]

  devices = _outputs(_cell(nb, "jax.devices()"), "stream")
  assert re.search(r"^backend: cpu$", devices, re.M), devices
  assert re.search(r"^devices: 1 \[CpuDevice", devices, re.M), devices

  # The demo: its results.md (table, comparisons) shown as Markdown, its dev-MAP plot inline.
  demo_cell = _cell(nb, "configs\" / \"demo.py")
  results = (work / "demo" / "results.md").read_text()
  assert _outputs(demo_cell, "text/markdown") == [results]
  rows = [l for l in results.splitlines() if l.startswith("| ")]
  assert rows[0].startswith("| system | MAP |")
  for loss in ("ot", "contrastive"):
    assert any(r.startswith(f"| {loss} distillation (2 steps) |") for r in rows), loss
  assert "| system | MAP |" in _outputs(demo_cell, "stream")  # train.py's own print as well
  assert _png(demo_cell) == [(work / "demo" / "dev_map.png").read_bytes()]

  # so.py: the final table (MAP, nDCG@20, R@100 from its eval.json) and its curves.
  so_cell = _cell(nb, "configs\" / \"so.py")
  [table] = _outputs(so_cell, "text/markdown")
  lines = table.splitlines()
  assert lines[0] == "| collection | MAP | nDCG@20 | R@100 |"
  evaluated = json.loads((work / "so" / "eval" / "step_2" / "eval.json").read_text())
  evaluated = evaluated["results"]
  splits = ["ciral-so-dev", "ciral-so-test-a", "ciral-so-test-b"]  # each also MaxSim-reranked
  assert list(evaluated) == ["bitext-so-en", *[n for s in splits for n in (s, f"{s}, MaxSim")]]
  for line, (name, values) in zip(lines[2:], evaluated.items(), strict=True):
    shown = line.strip("| ").split(" | ")
    assert shown[0] == name
    assert [float(v) for v in shown[1:]] == [round(values[m], 4) for m in ("MAP", "nDCG@20", "R@100")]
  assert "| collection | MAP |" in _outputs(so_cell, "stream")
  assert "54 training pairs, 6 held out" in _outputs(so_cell, "stream")  # the fixture's bitext
  assert _png(so_cell) == [(work / "so" / "curves.png").read_bytes()]


def _png(cell) -> list[bytes]:
  return [base64.b64decode(data) for data in _outputs(cell, "image/png")]
