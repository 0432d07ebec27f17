"""What `train.py` and `eval.py` share: process flags, start-up in the right order, our own
errors printed as one short line instead of a traceback (`--verbose` or `OPTICAL_VERBOSE=1`
shows it), and Ctrl-C as exit 130 with a line saying what is kept."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from absl import app, flags

from optical_jax.files.layout import Workdir

FLAGS = flags.FLAGS

# Our errors by defining module and class name, matched along the exception's classes: telling
# one imports nothing (a module not loaded cannot have raised its error), so `eval.py --run`
# never loads the training stack to print a line, and a module that fails to import cannot
# turn a one-line error into two tracebacks.
_OUR_ERRORS = frozenset({
    ("optical_jax.config", "ConfigError"),
    ("optical_jax.files.cache_files", "CacheWriteError"),
    ("optical_jax.evaluation.collections", "CollectionError"),
    ("optical_jax.evaluation.metrics", "MeasureError"),
    ("optical_jax.models.export", "ExportError"),
    ("optical_jax.models.loaded", "CheckpointError"),
    ("optical_jax.runtime.distributed", "ProcessFlagError"),
    ("optical_jax.files.textfiles", "DataFormatError"),
    ("optical_jax.training.checkpoints", "CheckpointFault"),
    ("optical_jax.training.loop", "TrainingError"),
    ("optical_jax.runtime.lock", "WorkdirBusy"),
})

def define_process_flags() -> None:
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for a run of "
                      "several processes where JAX does not detect the cluster itself.")
  flags.DEFINE_integer("num_processes", None, "How many processes the run has.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
  flags.DEFINE_float("join_timeout", 300, "Seconds to wait for every process of a run of "
                     "several (--num_processes) to join before giving up.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks of our own errors.")


def start(argv, config, workdir: str | None):
  """Checks `argv`, then, in this order, sets up host memory (before JAX starts threads),
  quiets library logging (into `workdir/logs/libraries.log`), joins a multi-process run and
  turns on the compilation cache. Returns `config`."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from optical_jax.config import check_fields
  # Every field the file set, against the schema, before anything loads: a misspelt one would
  # be a new field, silently ignored (overrides naming no field fail in `_parse_flags`).
  check_fields(config, source=_config_file(sys.argv) or "--config")
  # Modules without JAX at import: host memory is set before anything starts threads.
  from optical_jax.runtime import (compilation_cache, console, distributed, host, host_memory,
                                   stopping)
  host_memory.configure(config.runtime.host_memory)
  log_file = Workdir(Path(workdir).expanduser()).library_log if workdir else None
  if log_file is not None and log_file.parent.parent.exists() and \
      not log_file.parent.parent.is_dir():
    log_file = None  # --workdir is a file: the loop says so
  console.quiet_libraries(log_file)
  if workdir:
    stopping.on_interrupt(f"{Path(workdir).expanduser()} keeps every checkpoint saved so far; "
                          "rerun the same command to resume (a finished run evaluates again)")
  distributed.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id, join_timeout=FLAGS.join_timeout)
  compilation_cache.enable_compilation_cache(config)
  if not host.is_primary():  # process 0 speaks for the run
    import logging
    logging.getLogger("optical_jax").setLevel(logging.WARNING)
  return config


def _is_ours(error: BaseException) -> bool:
  return isinstance(error, FileNotFoundError) or any(
      (c.__module__, c.__qualname__) in _OUR_ERRORS for c in type(error).__mro__)


def _verbose(argv=()) -> bool:
  """`OPTICAL_VERBOSE=1`, or `--verbose` (in `argv` while the flags are not parsed yet)."""
  env = os.environ.get("OPTICAL_VERBOSE", "").strip().lower() in ("1", "true", "yes")
  return env or "--verbose" in argv or (FLAGS.is_parsed() and "verbose" in FLAGS
                                        and FLAGS.verbose)


def run(main) -> None:
  """`absl.app.run(main)`, with our errors as `error: message` (exit 1) and Ctrl-C outside
  the train loop as one line saying what is kept (exit 130), even where a library swallowed
  the interrupt (`optical_jax.runtime.stopping`)."""
  def guarded(argv):
    from optical_jax.runtime import stopping
    stopping.install()
    try:
      result = main(argv)
    except KeyboardInterrupt:
      if _verbose():
        raise
      stopping.exit_interrupted()
    except Exception as e:
      if stopping.received() and not _verbose():
        stopping.exit_interrupted()  # a library turned the interrupt into its own error
      if not _verbose() and isinstance(e, OSError) and "Configuration is not available" in str(e):
        reason = str(e).strip().splitlines()[-1].strip()  # "[Errno 2] No such file ...: path"
        print(f"error: --config: {reason}", file=sys.stderr)
        sys.exit(2)
      if _verbose() or not _is_ours(e):
        raise
      print(f"error: {e}\n(--verbose shows the traceback)", file=sys.stderr)
      sys.exit(1)
    if stopping.received():
      stopping.exit_interrupted()  # swallowed for good somewhere and main went on: no success
    return result
  app.run(guarded, flags_parser=_parse_flags)


def _config_file(argv) -> str | None:
  """The file of `--config=FILE[:ARG]` (or `--config FILE`) in `argv`."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":")[0]
  return None


def _raised_in(error: BaseException, path: str | None) -> str | None:
  """`FILE:LINE` of the deepest frame of `error`'s traceback that ran `path` (the config file
  while it was loading), else None."""
  if not path:
    return None
  target, where, tb = os.path.realpath(path), None, error.__traceback__
  while tb is not None:
    if os.path.realpath(tb.tb_frame.f_code.co_filename) == target:
      where = f"{path}:{tb.tb_lineno}"
    tb = tb.tb_next
  return where


def _absent_group(override: str, error: BaseException) -> bool:
  """Whether `override` (`--config.GROUP.FIELD`) names a field of an optional group that the
  config lacks: ml_collections then raises a KeyError quoting the group."""
  from optical_jax.config import GROUPS
  group = override.removeprefix("--config.").split(".")[0]
  return (isinstance(error, (KeyError, AttributeError)) and f"'{group}'" in str(error)
          and any(g.name == group and g.optional for g in GROUPS))


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override as one line (exit 2). A field
  that does not exist is named as `check_fields` names those of a file: by the override that
  gave it, or by the config file's line that used it."""
  try:
    return FLAGS(argv)
  except Exception as e:  # config_flags raises AttributeError, KeyError, ... for overrides
    if _verbose(argv):
      raise
    from optical_jax.config import unknown_field
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    unknown = [unknown_field(o.removeprefix("--config."), o) for o in overrides]
    in_file = _raised_in(e, _config_file(argv))
    absent = [o for o in overrides if _absent_group(o, e)]
    if any(unknown) and not in_file:
      message = str(next(u for u in unknown if u))
    elif absent:
      group = absent[0].removeprefix("--config.").split(".")[0]
      message = (f"{absent[0]}: this config has no {group} group ({group} is an optional group: "
                 f"a config file adds it with optional_group({group!r}, ...), as "
                 f"configs/{group}.py does)")
    elif in_file and isinstance(e, (AttributeError, KeyError)) and e.args:
      # A misspelt group in the file: ml_collections names it first, quoted.
      name = re.match(r"\W*(\w+)", str(e.args[0]))
      error = unknown_field(name.group(1), in_file) if name else None
      message = str(error) if error else f"{in_file}: {type(e).__name__}: {e}"
    elif in_file:
      message = f"{in_file}: {type(e).__name__}: {e}"
    else:
      message = str(e)
    if "docs/configuration.md" not in message:
      message += " (config fields and their defaults: docs/configuration.md)"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
