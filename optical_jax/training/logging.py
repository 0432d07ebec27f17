"""What a run records: metrics as JSON lines and TensorBoard events, and its curves as a plot.
Only process 0 writes; on the others these objects do nothing."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping

from optical_jax.files.fileio import write_text_atomic
from optical_jax.files.layout import Workdir
from optical_jax.files.textfiles import DataFormatError

log = logging.getLogger("optical_jax")


def _kept_records(path: Path, resume_step: int) -> list[str]:
  """The lines of `path` up to `resume_step`. A torn last line (a crash mid-append) is dropped
  with a warning; a broken line before it is a `DataFormatError` naming its line."""
  lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
  kept = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      before = json.loads(line)["step"] <= resume_step
    except (ValueError, KeyError, TypeError):
      if number == len(lines):
        log.warning("%s:%d: a torn last record (the run stopped while writing it); dropped",
                    path, number)
        continue
      raise DataFormatError(f"{path}:{number}: not a metrics record ({line[:60]!r}); fix or "
                            "remove that line to resume") from None
    if before:
      kept.append(line)
  return kept


class MetricsLog:
  """`workdir/metrics.jsonl` and `workdir/tensorboard`; on resume, records after the resumed
  step (written by the interrupted run, about to be redone) and a torn last line are dropped.
  Each record is appended whole and flushed to disk at once."""

  def __init__(self, workdir: Path, resume_step: int, *, enabled: bool = True):
    self.path, self.enabled = Workdir(workdir).metrics, enabled
    if not enabled:
      return
    kept = _kept_records(self.path, resume_step) if self.path.is_file() else []
    write_text_atomic(self.path, "".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter
    self.writer = SummaryWriter(str(Workdir(workdir).tensorboard), purge_step=resume_step + 1)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())  # on disk before the step's checkpoint counts
    for key, value in values.items():
      self.writer.add_scalar(key, float(value), int(step))
    self.writer.flush()

  def records(self) -> list[dict]:
    if not self.path.is_file():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

  def close(self) -> None:
    if self.enabled:
      self.writer.close()


def start_comparison(records: list[dict], best_dir: Path) -> str | None:
  """One line for the end of a run: the best trained step's dev MAP (the checkpoint in
  `best_dir`, which eval.py takes) against step 0's, the student before training, saying
  plainly when training did not beat it. None without a dev MAP after step 0."""
  dev = [(r["step"], r["dev_MAP"]) for r in records if "dev_MAP" in r]
  trained = [(step, value) for step, value in dev if step > 0]
  if not trained:
    return None
  # The best checkpoint is the first step to reach the highest dev MAP (a later tie is no new
  # best).
  step, best = max(trained, key=lambda point: (point[1], -point[0]))
  start = next((value for s, value in dev if s == 0), None)
  where = f"step {step}, the checkpoint in {best_dir} that eval.py evaluates"
  if start is None:
    return f"best dev MAP {best:.4f} ({where})"
  if best > start:
    return (f"best dev MAP {best:.4f} ({where}); step 0, before training: {start:.4f} "
            f"({best - start:+.4f})")
  return (f"training did not beat the start: best dev MAP {best:.4f} ({where}) is not above "
          f"step 0's {start:.4f}, the student before training; configs/pair.py's recipe "
          "learns a new language (docs/configuration.md)")


def plot_curves(records: list[dict], path: Path, title: str = "") -> Path:
  """Training loss and dev MAP against steps, side by side."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.8))
  losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
  maps = [(r["step"], r["dev_MAP"]) for r in records if "dev_MAP" in r]
  if losses:
    ax_loss.plot(*zip(*losses), lw=1)
  ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
  if maps:
    ax_map.plot(*zip(*maps), marker="o")
  ax_map.set(xlabel="step", ylabel="MAP", title="dev MAP")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
