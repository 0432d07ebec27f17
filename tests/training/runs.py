"""What the training tests share: a tiny bitext, config files for it, runs of `train.py` (in a
subprocess, or the same run in the test's process) and the parameters a run's checkpoints hold."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.helpers import ROOT, load_config


SENTENCES = [("Ndipo Mulungu anati, Kuyere; ndipo kunayera.", "And God said, Let there be light."),
             ("Yesu analira.", "Jesus wept."),
             ("Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.",
              "In the beginning God created the heaven and the earth."),
             ("Ndipo madzulo ndi m'mawa anali tsiku loyamba.",
              "And the evening and the morning were the first day.")]


# Short names the tests use for grouped config fields.
FIELDS = {"num_train_steps": "train.num_train_steps", "checkpoint_every_steps":
          "train.checkpoint_every_steps", "keep_checkpoints": "train.keep_checkpoints",
          "trainable": "train.trainable", "cache_dir": "runtime.cache_dir",
          "xla_cpu_schedule": "runtime.xla_cpu_schedule", "host_memory": "runtime.host_memory"}


def write_config(path: Path, checkpoint: Path, train_file: Path, **overrides) -> Path:
  lines = "\n".join(f"  c.{FIELDS.get(k, k)} = {v!r}" for k, v in overrides.items())
  path.write_text(textwrap.dedent(f"""\
      from optical_jax.config import base_config

      def get_config():
        c = base_config()
        c.model.teacher = {str(checkpoint)!r}
        c.data.train_file = {str(train_file)!r}
        c.data.max_length = 16
        c.model.dropout = 0.0
        c.train.batch_size = 8
        c.train.num_train_steps = 3
        c.train.learning_rate = 1e-3
        c.train.warmup_steps = 1
        c.train.log_every_steps = 1
        c.train.checkpoint_every_steps = 1
        c.runtime.progress_bar = False
        c.runtime.cache_dir = {str(path.parent / "cache")!r}
      """) + lines + "\n  return c\n")
  return path


def run_train(config: Path, workdir: Path, *, devices: int = 1, extra=(), check=True, env=None):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
  return subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={config}",
                         f"--workdir={workdir}", *extra], env=env, capture_output=True,
                        text=True, check=check, timeout=600)


def train_here(config: Path, workdir: Path, overrides: dict | None = None):
  """What `train.py --config=config --workdir=workdir --config.K=V ...` runs, in this process
  (one device), returning its `RunResult`: for tests of what a run computes and writes, without
  a new interpreter importing JAX again. Exit codes, signals, several devices or processes and
  the console stay with `run_train`. Its printed lines reach `capsys`, its log lines `caplog`
  (at INFO for the `optical_jax` logger)."""
  import jax
  from optical_jax.config import validate
  from optical_jax.data.inputs import resolve_inputs
  from optical_jax.training.loop import train_and_evaluate
  config = load_config(config)
  for dotted, value in (overrides or {}).items():
    *groups, field = FIELDS.get(dotted, dotted).split(".")
    node = config
    for group in groups:
      node = node[group]
    node[field] = value
  validate(config, devices=jax.device_count(), backend=jax.devices()[0].platform)
  return train_and_evaluate(resolve_inputs(config).config, workdir)


def final_params(workdir: Path) -> dict[str, np.ndarray]:
  import orbax.checkpoint as ocp
  return final_params_at(workdir, ocp.CheckpointManager(workdir / "checkpoints").latest_step())


def assert_same_params(a, b, atol):
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  assert worst < atol, worst


def final_params_at(workdir, step):
  import orbax.checkpoint as ocp
  return keyed(ocp.CheckpointManager(workdir / "checkpoints").restore(step)["params"])


def keyed(params) -> dict:
  """Leaves of a parameter tree by key path, as numpy arrays."""
  import jax
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}


def toy_collection(root: Path) -> dict:
  (root / "topics.tsv").write_text("".join(f"q{i}\t{s}\n" for i, (s, _) in enumerate(SENTENCES)))
  (root / "corpus.tsv").write_text("".join(f"d{i}\t{t}\n" for i, (_, t) in enumerate(SENTENCES)))
  (root / "qrels.txt").write_text("".join(f"q{i} 0 d{i} 1\n" for i in range(len(SENTENCES))))
  return dict(name="toy", topics=str(root / "topics.tsv"), corpus=str(root / "corpus.tsv"),
              qrels=str(root / "qrels.txt"), query_encoder="student", doc_encoder="teacher")
