"""Evaluates retrieval.

  python eval.py --run RUN --qrels QRELS [--per_query] [--measures MAP,nDCG@20]
      scores any TREC run file (BM25, NMT-translated queries, ...) like trec_eval.
  python eval.py --config CONFIG --checkpoint WORKDIR [--step best|latest|N]
      evaluates a trained student on the config's collections (the best checkpoint by dev
      MAP when there is one), printing a table and writing metrics JSON and run files into
      the workdir. Embeddings come from runtime.cache_dir/embeddings where these parameters
      encoded these texts before (a training run keeps its final step's): not encoded twice.
      Several processes each encode a share of each corpus and write the same run file.
  python eval.py --config CONFIG --checkpoint WORKDIR --export_hf DIR
      writes the trained student as a Hugging Face checkpoint (for transformers and
      sentence-transformers, or for config.model.student) instead of evaluating it.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from optical_jax import cli
from optical_jax.evaluation.metrics import DEFAULT_MEASURES

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
cli.define_process_flags()


def main(argv):
  if FLAGS.run or FLAGS.qrels:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not (FLAGS.run and FLAGS.qrels):
      raise app.UsageError("--run and --qrels go together")
    from optical_jax.evaluation.report import score_run_file
    print(score_run_file(FLAGS.run, FLAGS.qrels, measures=FLAGS.measures,
                         per_query=FLAGS.per_query))
    return
  if FLAGS.config is None or FLAGS.checkpoint is None:
    raise app.UsageError("give --run and --qrels, or --config and --checkpoint")
  config = cli.start(argv, FLAGS.config, None)
  from optical_jax import runtime
  from optical_jax.models.student import build_models
  from optical_jax.training.checkpoints import restore_params
  workdir = Path(FLAGS.checkpoint).expanduser().resolve()
  if workdir.name in ("checkpoints", "best"):
    workdir = workdir.parent
  config = runtime.resolve_assets(config, training=False)
  models = build_models(config)
  params, step, which = restore_params(workdir, FLAGS.step)
  print(f"{workdir}: step {step} ({which})", flush=True)
  if FLAGS.export_hf:
    from optical_jax.models.export import export_student
    print(export_student(models, params, FLAGS.export_hf))
    return
  from optical_jax.evaluation.collections import collection_specs, evaluate_all, side_encoders
  evaluate_all(config, side_encoders(models, params, config), collection_specs(config), workdir,
               measures=FLAGS.measures, write=runtime.is_primary())


if __name__ == "__main__":
  cli.run(main)
