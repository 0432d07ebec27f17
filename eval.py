"""Evaluates retrieval.

  python eval.py --run RUN --qrels QRELS [--per_query] [--measures MAP,nDCG@10]
      scores any TREC run file (BM25, NMT-translated queries, ...) like trec_eval.
  python eval.py --config CONFIG --checkpoint WORKDIR
      evaluates a trained student on the config's collections, printing a table and writing
      metrics JSON and run files into the workdir.
  python eval.py --config CONFIG --checkpoint WORKDIR --export_hf DIR
      writes the trained student as a Hugging Face checkpoint (for transformers, or for
      config.student) instead of evaluating it.
"""

from absl import app, flags
from ml_collections import config_flags

from optical_jax.evaluation.metrics import DEFAULT_MEASURES

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=False)
flags.DEFINE_string("checkpoint", None, "Workdir (or its checkpoints folder) of a trained run.")
flags.DEFINE_string("run", None, "A TREC run file to score.")
flags.DEFINE_string("qrels", None, "TREC qrels for --run.")
flags.DEFINE_list("measures", list(DEFAULT_MEASURES), "Measures to report.")
flags.DEFINE_bool("per_query", False, "Also print each query's values.")
flags.DEFINE_string("export_hf", None, "With --config and --checkpoint: write the trained "
                    "student here as a Hugging Face checkpoint instead of evaluating it.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.run or FLAGS.qrels:
    if not (FLAGS.run and FLAGS.qrels):
      raise app.UsageError("--run and --qrels go together")
    from optical_jax.evaluation.report import score_run_file
    print(score_run_file(FLAGS.run, FLAGS.qrels, measures=FLAGS.measures,
                         per_query=FLAGS.per_query))
    return
  if FLAGS.config is None or FLAGS.checkpoint is None:
    raise app.UsageError("give --run and --qrels, or --config and --checkpoint")
  from optical_jax import host_memory
  # Before JAX's first computation starts its threads (see train.py): encoding a 64 x 128
  # batch with MiniLM page-faults 217 MiB without it, none with it.
  host_memory.configure(FLAGS.config.host_memory)
  if FLAGS.export_hf:
    from optical_jax.train import export_student
    print(export_student(FLAGS.config, FLAGS.checkpoint, FLAGS.export_hf))
    return
  from optical_jax.train import evaluate_checkpoint
  evaluate_checkpoint(FLAGS.config, FLAGS.checkpoint, measures=FLAGS.measures)


if __name__ == "__main__":
  app.run(main)
