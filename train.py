"""Trains an OPTICAL student (or the English teacher).

  python train.py --config configs/tiny.py --workdir /tmp/optical_tiny
  python train.py --config configs/so.py --workdir runs/so --config.num_train_steps=5000

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=False)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and plots go.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every checkpoint operation at INFO through absl; keep ours and its warnings.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("optical_jax").setLevel(logging.INFO)
  from optical_jax import host_memory
  # First: glibc fixes a thread's malloc arena when the thread first allocates.
  host_memory.configure(FLAGS.config.host_memory)
  from optical_jax.train import run
  run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
