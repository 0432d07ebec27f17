"""What `train.py` and `eval.py` share: process flags, start-up in the right order, and our
own errors printed as one short line instead of a traceback (`--verbose` or
`OPTICAL_VERBOSE=1` shows it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS


def define_process_flags() -> None:
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for a run of "
                      "several processes where JAX does not detect the cluster itself.")
  flags.DEFINE_integer("num_processes", None, "How many processes the run has.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks of our own errors.")


def start(argv, config, workdir: str | None):
  """Checks `argv`, then, in this order, sets up host memory (before JAX starts threads),
  quiets library logging (into `workdir/logs/libraries.log`), joins a multi-process run and
  turns on the compilation cache. Returns `config`."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from optical_jax import runtime
  runtime.configure_host_memory(config.runtime.host_memory)
  log_file = Path(workdir).expanduser() / "logs" / "libraries.log" if workdir else None
  if log_file is not None and log_file.parent.parent.exists() and \
      not log_file.parent.parent.is_dir():
    log_file = None  # --workdir is a file: the loop says so
  runtime.quiet_libraries(log_file)
  runtime.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id)
  runtime.enable_compilation_cache(config)
  if not runtime.is_primary():  # process 0 speaks for the run
    import logging
    logging.getLogger("optical_jax").setLevel(logging.WARNING)
  return config


def _our_errors() -> tuple[type, ...]:
  from optical_jax.config import ConfigError
  from optical_jax.evaluation.collections import CollectionError
  from optical_jax.models.export import ExportError
  from optical_jax.models.hf_checkpoint import CheckpointError
  from optical_jax.textfiles import DataFormatError
  from optical_jax.training.checkpoints import CheckpointFault
  from optical_jax.training.loop import TrainingError
  from optical_jax.training.workdir import WorkdirBusy
  return (ConfigError, CollectionError, ExportError, CheckpointError, DataFormatError,
          CheckpointFault, TrainingError, WorkdirBusy, FileNotFoundError)


def _verbose(argv=()) -> bool:
  """`OPTICAL_VERBOSE=1`, or `--verbose` (in `argv` while the flags are not parsed yet)."""
  env = os.environ.get("OPTICAL_VERBOSE", "").strip().lower() in ("1", "true", "yes")
  return env or "--verbose" in argv or (FLAGS.is_parsed() and FLAGS.verbose)


def run(main) -> None:
  """`absl.app.run(main)`, with our errors as `error: message` (exit 1) and Ctrl-C outside
  the train loop as one line (exit 130)."""
  def guarded(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:
      if _verbose():
        raise
      print("interrupted", file=sys.stderr)
      sys.exit(130)
    except Exception as e:
      if not _verbose() and isinstance(e, OSError) and "Configuration is not available" in str(e):
        reason = str(e).strip().splitlines()[-1].strip()  # "[Errno 2] No such file ...: path"
        print(f"error: --config: {reason}", file=sys.stderr)
        sys.exit(2)
      if _verbose() or not isinstance(e, _our_errors()):
        raise
      print(f"error: {e}\n(--verbose shows the traceback)", file=sys.stderr)
      sys.exit(1)
  app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override as one line (exit 2)."""
  try:
    return FLAGS(argv)
  except Exception as e:  # config_flags raises AttributeError, KeyError, ... for overrides
    if _verbose(argv):
      raise
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    if isinstance(e, (AttributeError, KeyError)) and e.args:  # an override naming no field
      detail = str(e.args[0]).strip("'\"").replace("\\'", "'").replace("\\n", " ")
      detail = " ".join(detail.replace("\n", " ").split())
      message = f"{', '.join(overrides) or '--config'}: no such config field ({detail})"
    else:
      message = str(e)
    print(f"error: {message}\nconfig fields and their defaults: optical_jax/config.py",
          file=sys.stderr)
    sys.exit(2)
