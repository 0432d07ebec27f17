"""A config's test collections: their specs, the encoders of both sides (teacher, student),
and evaluating them all into tables, metrics JSON and TREC run files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import ml_collections

from optical_jax.evaluation.check import absent_judged
from optical_jax.evaluation.io import read_qrels, read_topics, write_run
from optical_jax.evaluation.metrics import DEFAULT_MEASURES, evaluate, evaluate_per_query
from optical_jax.evaluation.report import format_table
from optical_jax.evaluation.retrieval import TextEncoder, retrieve
from optical_jax.fileio import write_text_atomic


class CollectionError(FileNotFoundError):
  """A collection file that is missing; the message names the config field."""


def collection_specs(config) -> list[ml_collections.ConfigDict]:
  """`config.eval.collections`, each checked to have its three files."""
  specs = [ml_collections.ConfigDict(dict(s)) if isinstance(s, Mapping) else s
           for s in config.eval.collections]
  for spec in specs:
    for field in ("topics", "corpus", "qrels"):
      path = Path(spec[field]).expanduser()
      if not path.is_file():
        raise CollectionError(f"config.eval.collections[{spec.name!r}].{field}: {path} does not "
                              f"exist. {spec.get('how_to_get', '')}".rstrip())
  return specs


def encoder_settings(config) -> dict:
  """`TextEncoder` settings from `config.eval`: lengths, per-device batch, corpus chunk,
  bucket width, dtype, the one embedding cache (`runtime.cache_dir/embeddings`) unless
  `eval.embedding_cache` is off, and the corpus scans and token ids
  (`runtime.cache_dir/corpus`, as `check.check_collections` keeps them) unless
  `eval.token_cache` is off."""
  e, root = config.eval, Path(config.runtime.cache_dir).expanduser()
  return dict(max_length=e.max_length, batch_size=e.batch_size,
              cache_dir=root / "embeddings" if e.get("embedding_cache", True) else None,
              corpus_chunk=e.get("corpus_chunk", 32768), bucket_width=e.get("bucket_width", 16),
              dtype=e.get("dtype", "float32"),
              corpus_cache_dir=root / "corpus" if e.get("token_cache", True) else None)


def teacher_encoder(encoder, config) -> TextEncoder:
  """The frozen teacher's text encoder; its embeddings are cached across runs."""
  return TextEncoder(encoder, **encoder_settings(config))


def side_encoders(models, params, config) -> dict[str, TextEncoder]:
  """The encoders of both sides of `models` (`DistillationModels`); build once and update
  `["student"].params` as training goes, so evaluation compiles once. Both cache their
  embeddings keyed by their parameters (the training loop turns the student's cache off
  except at its final step: intermediate steps are never evaluated again)."""
  return {
      "teacher": teacher_encoder(models.teacher, config),
      "student": TextEncoder(models.student, params=params,
                             token_fn=lambda p, ids, mask: models.student_tokens(p, ids, mask),
                             **encoder_settings(config)),
  }


def _prompt(encoder: TextEncoder, side: str) -> str:
  return getattr(encoder.encoder, "prompts", {}).get(side, "")


def evaluate_collection(spec, encoders: Mapping[str, TextEncoder], *,
                        measures=DEFAULT_MEASURES, k: int = 100,
                        progress: bool = True) -> tuple[dict, dict, dict]:
  """(aggregate metrics, per-query metrics, run) of one collection.

  The corpus is never held as text: its scan (docids) and token ids come from the doc
  encoder's corpus cache when an evaluation made them before (`TextEncoder.corpus`), and are
  streamed from the file otherwise. Judged documents absent from the corpus are warned
  about (once per process)."""
  topics = read_topics(spec.topics)
  qrels = read_qrels(spec.qrels, topics=topics)
  if spec.get("max_queries"):
    topics = {q: topics[q] for q in list(topics)[:spec.max_queries]}
    qrels = {q: qrels[q] for q in topics if q in qrels}
  # Each side's checkpoint may declare a prefix ("query: ", "passage: ") it was trained with.
  query_prompt = _prompt(encoders[spec.query_encoder], "query")
  passage_prompt = _prompt(encoders[spec.doc_encoder], "passage")
  if query_prompt:
    topics = {q: query_prompt + text for q, text in topics.items()}
  corpus = encoders[spec.doc_encoder].corpus(Path(spec.corpus).expanduser(),
                                             prompt=passage_prompt)
  absent_judged(qrels, corpus.scan, qrels_path=spec.qrels)
  run = retrieve(topics, corpus, query_encoder=encoders[spec.query_encoder],
                 doc_encoder=encoders[spec.doc_encoder], k=k, progress=progress)
  return evaluate(run, qrels, measures), evaluate_per_query(run, qrels, measures), run


def evaluate_all(config, encoders: Mapping[str, TextEncoder], specs, workdir: Path, *,
                 measures=DEFAULT_MEASURES, progress: bool = True,
                 evaluated: Mapping[str, tuple] | None = None, write: bool = True) -> dict:
  """Evaluates every collection, writing `eval.json`, per-query values and TREC run files
  into `workdir` and printing the table (only where `write`: process 0).

  `evaluated` maps collection names to `evaluate_collection` results already computed with
  the same encoders and `measures` (the dev evaluation of the last training step).
  """
  results, per_query = {}, {}
  for spec in specs:
    if evaluated and spec.name in evaluated:
      values, by_query, run = evaluated[spec.name]
    else:
      values, by_query, run = evaluate_collection(spec, encoders, measures=measures,
                                                  k=config.eval.k, progress=progress)
    results[spec.name], per_query[spec.name] = values, by_query
    if write:
      write_run(run, workdir / "runs" / f"{spec.name}.trec", tag=f"optical_jax-{config.loss}")
  if results and write:
    write_text_atomic(workdir / "eval.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(workdir / "eval_per_query.json", json.dumps(per_query) + "\n")
    rows = [{"collection": name, **values} for name, values in results.items()]
    print(format_table(rows, ["collection", *measures]), flush=True)
  return results
