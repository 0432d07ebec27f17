"""Evaluates retrieval.

  python eval.py --run RUN --qrels QRELS [--per_query] [--measures MAP,nDCG@20]
      scores any TREC run file (BM25, NMT-translated queries, ...) like trec_eval.
  python eval.py --config CONFIG --checkpoint WORKDIR [--step best|latest|N]
      evaluates a trained student on the config's collections (the best checkpoint by dev
      MAP when there is one), printing a table and writing WORKDIR/eval/step_N/: eval.json
      (the step, its checkpoint, the collection files' SHA-256 digests, the measures and the
      config with the values), eval_per_query.json and runs/NAME.trec; other steps' results
      stay as they are. It holds the workdir's lock while it evaluates (never beside a
      training run), and loads hub inputs at the commits WORKDIR/config.json records.
      Embeddings come from runtime.cache_dir/embeddings where these parameters
      encoded these texts before (a training run keeps its final step's): not encoded twice.
      Several processes each encode a share of each corpus and write the same run file.
      The model is the one the run trained: the model fields of WORKDIR/config.json
      (model.student, model.vocab_extension, ...) override the config's, which says so.
  python eval.py --config CONFIG --checkpoint WORKDIR --export_hf DIR [--overwrite]
      writes the trained student as a Hugging Face checkpoint (for transformers and
      sentence-transformers, or for config.model.student) instead of evaluating it. DIR is
      new or empty, or an earlier export replaced whole with --overwrite (it holds
      .optical_jax_export.json and nothing else); never a directory a model loads from.
"""

import json
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from optical_jax import cli
from optical_jax.evaluation.metrics import DEFAULT_MEASURES, MeasureError, check_measures
from optical_jax.files.layout import Workdir
from optical_jax.training.student_init import COMPLETE

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=False)
flags.DEFINE_string("checkpoint", None, "Workdir (or its checkpoints folder) of a trained run.")
flags.DEFINE_string("step", "best", "Which checkpoint: 'best' by dev MAP (the latest when "
                    "there is none), 'latest', or a step number.")
flags.DEFINE_string("run", None, "A TREC run file to score.")
flags.DEFINE_string("qrels", None, "TREC qrels for --run.")
flags.DEFINE_list("measures", list(DEFAULT_MEASURES), "Measures to report.")
flags.DEFINE_bool("per_query", False, "Also print each query's values.")
flags.DEFINE_string("export_hf", None, "With --config and --checkpoint: write the trained "
                    "student here as a Hugging Face checkpoint instead of evaluating it.")
flags.DEFINE_bool("overwrite", False, "With --export_hf: replace an earlier export whole.")
cli.define_process_flags()

# Model settings that change how the model computes, not what it is: the given config's hold.
COMPUTE_ONLY = ("model.dtype", "model.attention", "model.remat", "model.dropout")
# What the vocabulary-adapted student is built from (the key of
# adaptation.pipeline.adapted_student_dir), taken from a run that extended the vocabulary
# before workdirs held their initial student (WORKDIR/student_init).
ADAPTATION_FIELDS = ("data.train_file", "data.student_field", "data.teacher_field",
                     "data.hf_dataset", "data.hf_config", "data.hf_split", "data.limit",
                     "data.max_length", "data.alignment_pairs", "seed", "ot.epsilon", "ot.center")


def main(argv):
  try:  # before any work: a typo costs no model loading
    measures = check_measures(FLAGS.measures)
  except MeasureError as e:
    raise MeasureError(f"--measures: {e}") from None
  if FLAGS.run or FLAGS.qrels:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not (FLAGS.run and FLAGS.qrels):
      raise app.UsageError("--run and --qrels go together")
    from optical_jax.evaluation.report import score_run_file
    from optical_jax.runtime import stopping
    stopping.on_interrupt("nothing was written")
    print(score_run_file(FLAGS.run, FLAGS.qrels, measures=measures,
                         per_query=FLAGS.per_query))
    return
  if FLAGS.config is None or FLAGS.checkpoint is None:
    raise app.UsageError("give --run and --qrels, or --config and --checkpoint")
  if FLAGS.overwrite and not FLAGS.export_hf:
    raise app.UsageError("--overwrite goes with --export_hf")
  config = cli.start(argv, FLAGS.config, None)
  from optical_jax.data.inputs import resolve_inputs
  from optical_jax.runtime import host, stopping
  workdir = Path(FLAGS.checkpoint).expanduser().resolve()
  if workdir in (Workdir(workdir.parent).checkpoints, Workdir(workdir.parent).best):
    workdir = workdir.parent
  stopping.on_interrupt(f"nothing was written; {workdir} is as it was")
  config = resolve_inputs(config, training=False, workdir=workdir).config
  config = as_trained(config, workdir, speak=host.is_primary())
  from optical_jax.training.student_init import prepare_student
  config = prepare_student(config, None)  # only a run trained before workdirs held it
  if FLAGS.export_hf:
    protected = protected_directories(config, workdir)
    target = checked_export_target(FLAGS.export_hf, protected)
  from optical_jax.evaluation.check import check_collections
  from optical_jax.evaluation.collections import (Evaluated, Evaluator, collection_specs,
                                                  results_dir)
  from optical_jax.models.student import build_models
  from optical_jax.training.checkpoints import restore_params
  if not FLAGS.export_hf:  # a malformed collection file fails before the models load
    check_collections(collection_specs(config), config.runtime.cache_dir)
  models = build_models(config)
  params, step, which = restore_params(workdir, FLAGS.step)
  stopping.on_interrupt(f"{target} is as it was" if FLAGS.export_hf else
                        f"{workdir}'s checkpoints are untouched and {results_dir(workdir, step)} "
                        "holds the last complete evaluation of that step, if any")
  print(f"{workdir}: step {step} ({which})", flush=True)
  stopping.check()
  if FLAGS.export_hf:
    if not host.is_primary():
      return  # process 0 writes the one export
    from optical_jax.models.export import ExportError, export_student
    try:
      print(export_student(models, params, target, overwrite=FLAGS.overwrite,
                           protected=protected, max_length=config.eval.max_length, source={
                               "workdir": str(workdir), "step": int(step), "checkpoint": which}))
    except ExportError as e:
      raise ExportError(f"--export_hf {e}") from None
    return
  from optical_jax.runtime.lock import workdir_lock
  paths = Workdir(workdir)
  checkpoint = (paths.best if which == "best" else paths.checkpoints) / str(step)
  evaluated_as = Evaluated(step, which if which in ("best", "latest") else "step",
                           str(checkpoint))
  # Results are written into the workdir under its lock: never beside a training run's own.
  with workdir_lock(workdir, enabled=host.is_primary()):
    Evaluator(models, config, measures=measures).evaluate_all(
        collection_specs(config), params, workdir, evaluated_as, write=host.is_primary(),
        progress=bool(config.runtime.progress_bar) and host.is_primary())


def _same(a, b) -> bool:
  """Equal config values; paths that name one directory count as equal."""
  norm = lambda v: json.loads(json.dumps(v, default=str))
  if norm(a) == norm(b):
    return True
  if isinstance(a, str) and isinstance(b, str) and a and b:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
  return False


def as_trained(config, workdir: Path, *, speak: bool = True):
  """`config` with the model fields of the run in `workdir` (its `config.json`, written by
  train.py with asset references resolved): its weights are those of the model it trained
  (its student, its vocabulary, its teacher), which a config without, e.g., the run's
  model.vocab_extension would build other shapes for. Says in one line which fields it took;
  a run's checkpoint directory that is not on this machine keeps the config's."""
  from optical_jax.config import REVISIONS, ConfigError, base_config, field_value
  from optical_jax.data.inputs import recorded
  saved_path, saved = Workdir(workdir).config, recorded(workdir)
  if not saved:
    return config
  defaults = base_config()
  lookup = lambda tree, field: field_value(tree, field, KeyError)

  fields = ["stage", "loss", *(f"model.{k}" for k in config.model.keys()
                               if f"model.{k}" not in (*COMPUTE_ONLY, "model.student_init"))]
  # The student the run started from, in the workdir (wherever it was copied to); a run
  # trained before workdirs held it is rebuilt from what built it (its bitext and settings).
  student_init = Workdir(workdir).student_init
  prepared = (student_init / COMPLETE).is_file()
  trained_vocab = lookup(saved, "model.vocab_extension")
  if trained_vocab not in (KeyError, 0, None) and not prepared:
    fields += ADAPTATION_FIELDS
  taken, kept = [], []
  for field in fields:
    value = lookup(saved, field)
    if value is KeyError and field in REVISIONS:  # a run before commits were recorded
      continue
    if value is KeyError:  # a field added since the run: the run had its default
      value = lookup(defaults, field)
    current = lookup(config, field)
    if value is KeyError or current is KeyError:
      continue
    if field == "data.train_file" and current:  # saved resolved; compare it resolved
      from optical_jax.data.assets import resolve
      current = resolve(current, config.runtime.cache_dir)
    if _same(value, current):
      continue
    if field in ("model.teacher", "model.student") and value and str(value).startswith(
        ("/", "~", ".")) and not Path(value).expanduser().exists():
      kept.append(f"config.{field}={current!r} (the run's {value!r} is not here)")
      continue
    group, _, key = field.rpartition(".")
    holder = config[group] if group else config
    try:
      holder[key] = value
    except TypeError:
      if not isinstance(value, list):
        raise ConfigError(f"{saved_path}: the run's config.{field}={value!r} cannot replace the "
                          f"config's {current!r}") from None
      holder[key] = type(current)(value)  # JSON's list for a tuple field
    taken.append(f"config.{field}={value!r} (the config has {current!r})")
  if prepared:
    config.model.student_init = str(student_init)
  if (taken or kept) and speak:
    said = f"the model as trained, with {', '.join(taken)}" if taken else "the config's model"
    said += f"; kept {', '.join(kept)}" if kept else ""
    print(f"{saved_path}: evaluating {said}", file=sys.stderr, flush=True)
  return config


def protected_directories(config, workdir: Path) -> list:
  """What an export may not replace: the checkpoints the config's models load from, the
  run's checkpoints and workdir, the cache (`models.export.Protected` triples)."""
  from optical_jax.models.hf_checkpoint import resolve_checkpoint_dir
  from optical_jax.models.student import checkpoint_of
  protected = []
  for field in ("teacher", "student"):
    if not config.model[field]:
      continue
    try:
      directory = resolve_checkpoint_dir(*checkpoint_of(config.model, field))
    except Exception:  # not here: loading it fails later with its own message
      continue
    protected.append((f"the {field}'s checkpoint (config.model.{field})", directory, False))
  protected += [("the run's workdir", workdir, True),
                ("the run's checkpoints", Workdir(workdir).checkpoints, False),
                ("the run's best checkpoint", Workdir(workdir).best, False),
                ("the cache (config.runtime.cache_dir)", config.runtime.cache_dir, True)]
  return protected


def checked_export_target(directory: str, protected) -> Path:
  from optical_jax.models.export import ExportError, check_export_target
  try:
    return check_export_target(directory, protected=protected, overwrite=FLAGS.overwrite)
  except ExportError as e:
    raise ExportError(f"--export_hf {e}") from None


if __name__ == "__main__":
  cli.run(main)
