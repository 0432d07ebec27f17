"""Trains an OPTICAL student (or the English teacher), or runs the offline demo.

  python train.py --config configs/tiny.py --workdir /tmp/optical_tiny
  python train.py --config configs/so.py --workdir runs/so --config.train.num_train_steps=5000
  python train.py --config configs/demo.py --workdir runs/demo     # the offline benchmark

Several processes (a multi-GPU cluster without auto-detection, or processes on one machine):
  python train.py ... --coordinator_address HOST:PORT --num_processes N --process_id I

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from optical_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=False)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and plots go.")
cli.define_process_flags()
flags.mark_flags_as_required(["config"])


def main(argv):
  config = cli.start(argv, FLAGS.config, FLAGS.workdir)
  import jax
  from optical_jax.config import validate
  # The config first, the demo's group included: a bad field is named in seconds, before the
  # training stack loads.
  validate(config, devices=jax.device_count(), backend=jax.devices()[0].platform)
  if "demo" in config:
    from optical_jax.experiments.demo import run_demo
    run_demo(config, FLAGS.workdir or "runs/demo")  # prints its table
    return
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required")
  from optical_jax.data.inputs import resolve_inputs
  # Then the inputs: a missing download is named before the training stack loads too.
  inputs = resolve_inputs(config, workdir=FLAGS.workdir)  # a resume: the run's commits
  from optical_jax.training.loop import train_and_evaluate
  train_and_evaluate(inputs.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
