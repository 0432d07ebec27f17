"""A config's test collections: their specs, the encoders of both sides (teacher, student),
and evaluating them (`Evaluator`, built once per run) into results, tables, metrics JSON and
TREC run files.

A workdir keeps each evaluated step's results apart, each saying what produced it:

  WORKDIR/eval/step_N/eval.json            step, checkpoint, measures, values by collection,
                                           the collection files' SHA-256 digests, the config
  WORKDIR/eval/step_N/eval_per_query.json  each query's values, by collection and measure
  WORKDIR/eval/step_N/runs/NAME.trec       each collection's TREC run
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Mapping

import ml_collections
from jax.sharding import Mesh

from optical_jax.config import defaults, field_value
from optical_jax.evaluation.check import absent_judged
from optical_jax.evaluation.io import read_qrels, read_topics, write_run
from optical_jax.evaluation.maxsim import maxsim_rerank
from optical_jax.evaluation.metrics import DEFAULT_MEASURES, evaluate, evaluate_per_query
from optical_jax.evaluation.report import format_table
from optical_jax.evaluation.retrieval import BoundEncoder, TextEncoder, retrieve
from optical_jax.files.fileio import write_text_atomic
from optical_jax.files.fingerprint import checkpoint_digest, file_digest
from optical_jax.files.layout import CacheDir, Workdir
from optical_jax.models.student import student_token_fn
from optical_jax.runtime.mesh import local_mesh


class CollectionError(FileNotFoundError):
  """A collection file that is missing; the message names the config field."""


@dataclasses.dataclass(frozen=True)
class Evaluated:
  """Which parameters an evaluation is of: the training `step`, how it was chosen (`which`:
  "final" at the end of training; eval.py's "best", "latest" or "step") and the checkpoint
  directory they were restored from."""

  step: int
  which: str
  checkpoint: str


def results_dir(workdir: str | Path, step: int) -> Path:
  """Where the evaluation of `step` of the run in `workdir` is written."""
  return Workdir(workdir).results(step).root


def read_results(workdir: str | Path, step: int | None = None) -> dict:
  """The `eval.json` of `step` of the run in `workdir` (default: the latest step evaluated):
  "step", "which", "checkpoint", "measures", "results" ({collection: {measure: value}}),
  "collections" (each file's path and SHA-256) and "config"."""
  if step is None:
    steps = Workdir(workdir).evaluated_steps()
    if not steps:
      raise FileNotFoundError(f"{Workdir(workdir).eval}: no evaluation yet")
    step = max(steps)
  return json.loads(Workdir(workdir).results(step).summary.read_text(encoding="utf-8"))


def collection_specs(config, specs=None) -> list[ml_collections.ConfigDict]:
  """`specs` (default `config.eval.collections`), each checked to have its three files."""
  specs = [ml_collections.ConfigDict(dict(s)) if isinstance(s, Mapping) else s
           for s in (config.eval.collections if specs is None else specs)]
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
  cache, known = CacheDir(config.runtime.cache_dir), defaults()
  # A config saved before a field was added reads the field's default.
  e = lambda name: field_value(config, f"eval.{name}", known[f"eval.{name}"])
  return dict(max_length=e("max_length"), batch_size=e("batch_size"),
              cache_dir=cache.embeddings if e("embedding_cache") else None,
              corpus_chunk=e("corpus_chunk"), bucket_width=e("bucket_width"), dtype=e("dtype"),
              corpus_cache_dir=cache.corpus.root if e("token_cache") else None)


def side_encoders(models, config, mesh: Mesh) -> dict[str, TextEncoder]:
  """The text encoders of both sides of `models` (`DistillationModels`) over `mesh`: the
  frozen teacher's (its embeddings cached across runs) and the student's, whose token
  function takes the whole parameter tree (encoder and projection)."""
  # Keyed by the modules their token functions apply: the runs of one process (the demo's
  # students) share compiled programs.
  return {
      "teacher": TextEncoder(models.teacher, mesh, programs_key=("encoder", models.teacher.module),
                             **encoder_settings(config)),
      "student": TextEncoder(models.student, mesh,
                             token_fn=student_token_fn(models.student.module, models.projection),
                             programs_key=("student", models.student.module, models.projection),
                             **encoder_settings(config)),
  }


@dataclasses.dataclass
class CollectionResult:
  """One collection evaluated: aggregate `values` and `per_query` values by measure, and the
  `run`; `maxsim`, the same for the run's top `maxsim_depth` reranked by MaxSim when the
  collection asks for it."""

  values: dict[str, float]
  per_query: dict[str, dict[str, float]]
  run: dict[str, dict[str, float]]
  maxsim: "CollectionResult | None" = None


# The frozen teacher's MaxSim candidates' passage tokens, by checkpoint, settings and corpus
# ids (content, tokenizer, length, prompt): encoded once per process on small corpora (the
# demo's rows share them); larger corpora keep none.
_TEACHER_DOC_TOKENS: dict = {}
# The frozen teacher's query tokens and pooled vectors (MaxSim's query side), by checkpoint,
# settings and the queries' texts: encoded once per process where they fit
# `SMALL_CORPUS_BYTES` (every student of the demo meets the same English queries).
_TEACHER_QUERY_TOKENS: dict = {}
# A corpus is small when every passage's token vectors at full length (float32) fit in this:
# its dense pass keeps them for MaxSim (about 10,900 passages of 256 tokens at 384 dims).
SMALL_CORPUS_BYTES = 1 << 30


def holds_tokens(num_passages: int, encoder: BoundEncoder) -> bool:
  """Whether `num_passages` passages' token vectors fit `SMALL_CORPUS_BYTES` (float32, every
  passage at the encoder's full length, as wide as its token function returns them)."""
  e = encoder.text_encoder
  return num_passages * e.max_length * encoder.token_width * 4 <= SMALL_CORPUS_BYTES


def _teacher_key(encoder: BoundEncoder, *content) -> tuple:
  e = encoder.text_encoder
  return (checkpoint_digest(e.encoder.path), str(e.encoder.module.dtype), e.max_length, e.dtype,
          *content)


def _query_tokens(encoder: BoundEncoder, texts: list[str], *, teacher: bool):
  """Token vectors `[len(text_i), d]` and pooled vectors `[n, d]` of `texts` from one forward;
  a frozen teacher's kept for the process where they fit `SMALL_CORPUS_BYTES`."""
  encode = lambda: encoder.encode_tokens(texts, desc="query tokens", progress=False, pooled=True)
  if not teacher or not holds_tokens(len(texts), encoder):
    return encode()
  digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
  key = _teacher_key(encoder, encoder.text_encoder.tokenizer_key(), digest)
  if key not in _TEACHER_QUERY_TOKENS:
    _TEACHER_QUERY_TOKENS[key] = encode()
  return _TEACHER_QUERY_TOKENS[key]


def _prompt(encoder: BoundEncoder, side: str) -> str:
  return getattr(encoder.text_encoder.encoder, "prompts", {}).get(side, "")


def evaluate_collection(spec, encoders: Mapping[str, BoundEncoder], *,
                        measures=DEFAULT_MEASURES, k: int = 100,
                        progress: bool = True) -> CollectionResult:
  """One collection evaluated with `encoders` ({"teacher", "student"}: `BoundEncoder`s).

  The corpus is never held as text: its scan (docids) and token ids come from the doc
  encoder's corpus cache when an evaluation made them before (`TextEncoder.corpus`), and are
  streamed from the file otherwise. Judged documents absent from the corpus are warned
  about (once per process). With `spec.maxsim_depth`, the run's top that many are reranked
  by MaxSim (ColBERT late interaction: the query encoder's query tokens against the doc
  encoder's passage tokens), encoding only the candidates' passages (`maxsim.maxsim_rerank`:
  memory bounded by a group of candidates at any corpus size); a small corpus
  (`holds_tokens`) keeps its passages' tokens from the dense pass instead."""
  topics = read_topics(spec.topics)
  qrels = read_qrels(spec.qrels, topics=topics)
  if spec.get("max_queries"):
    topics = {q: topics[q] for q in list(topics)[:spec.max_queries]}
    qrels = {q: qrels[q] for q in topics if q in qrels}
  # Each side's checkpoint may declare a prefix ("query: ", "passage: ") it was trained with.
  query_encoder, doc_encoder = encoders[spec.query_encoder], encoders[spec.doc_encoder]
  query_prompt, passage_prompt = _prompt(query_encoder, "query"), _prompt(doc_encoder, "passage")
  queries = {q: query_prompt + text for q, text in topics.items()}
  corpus = doc_encoder.corpus(Path(spec.corpus).expanduser(), prompt=passage_prompt)
  absent_judged(qrels, corpus.scan, qrels_path=spec.qrels)
  depth = spec.get("maxsim_depth", 0)
  query_ids, query_vectors = list(queries), None
  if depth:  # the query tokens MaxSim needs, and the pooled vectors of the same forward
    query_tokens, query_vectors = _query_tokens(query_encoder, [queries[q] for q in query_ids],
                                                teacher=spec.query_encoder == "teacher")
  # A small corpus's dense pass keeps its passages' tokens (`kept`, by row) for MaxSim, from
  # the same forward: none is encoded twice. A frozen teacher's serve every run of this
  # process (`memo`, by docid).
  small = bool(depth) and holds_tokens(len(corpus), doc_encoder)
  memo, kept = None, {} if small else None
  if small and spec.doc_encoder == "teacher":
    memo = _TEACHER_DOC_TOKENS.setdefault(_teacher_key(doc_encoder, corpus.key), {})
  run = retrieve(queries, corpus, query_encoder=query_encoder, doc_encoder=doc_encoder, k=k,
                 progress=progress, query_vectors=query_vectors, doc_tokens=kept)
  result = CollectionResult(evaluate(run, qrels, measures),
                            evaluate_per_query(run, qrels, measures), run)
  if depth:
    if kept:
      memo = {} if memo is None else memo
      memo.update((corpus.docids[r], tokens) for r, tokens in kept.items())
    reranked = maxsim_rerank(run, dict(zip(query_ids, query_tokens)), corpus, doc_encoder,
                             depth=depth, memo=memo, progress=progress)
    result.maxsim = CollectionResult(evaluate(reranked, qrels, measures),
                                     evaluate_per_query(reranked, qrels, measures), reranked)
  return result


class Evaluator:
  """What evaluates a run's collections, built once over the run's `mesh` (default: this
  process's devices, `local_mesh`): the text encoders of the frozen teacher and of the
  student, compiled once. It holds no student parameters: each call is given them.
  `evaluate(spec, params, cache=...)` evaluates one collection with the student's `params`;
  with `cache` its embeddings are kept in the embedding cache (the final step, which eval.py
  of that checkpoint reuses), without it not (a dev step, never evaluated again)."""

  def __init__(self, models, config, *, measures=DEFAULT_MEASURES, mesh: Mesh | None = None):
    self.config, self.measures = config, tuple(measures)
    self.encoders = side_encoders(models, config, local_mesh() if mesh is None else mesh)

  @functools.cached_property
  def teacher(self) -> BoundEncoder:
    """The frozen teacher's encoder: placed and fingerprinted once, on first use."""
    return self.encoders["teacher"].bind()

  def sides(self, params, *, cache: bool = True) -> dict[str, BoundEncoder]:
    """The encoders of both sides for one evaluation of the student's `params`."""
    return {"teacher": self.teacher,
            "student": self.encoders["student"].bind(params, cache=cache)}

  def evaluate(self, spec, params, *, cache: bool = True,
               progress: bool = False) -> CollectionResult:
    return self._evaluate(spec, self.sides(params, cache=cache), progress)

  def _evaluate(self, spec, sides, progress: bool) -> CollectionResult:
    return evaluate_collection(spec, sides, measures=self.measures, k=self.config.eval.k,
                               progress=progress)

  def evaluate_all(self, specs, params, workdir: Path, evaluated_as: Evaluated, *,
                   evaluated: Mapping[str, CollectionResult] | None = None,
                   write: bool = True, progress: bool = True) -> dict[str, CollectionResult]:
    """Every collection of `specs` (those in `evaluated` already are: the dev evaluation of
    the last training step), written into `workdir` as the evaluation of `evaluated_as`
    (`write_results`) where `write` (process 0)."""
    results, sides = {}, None
    for spec in specs:
      results[spec.name] = (evaluated or {}).get(spec.name)
      if results[spec.name] is None:  # both sides bound once: the student fingerprinted once
        sides = sides or self.sides(params)
        results[spec.name] = self._evaluate(spec, sides, progress)
    if write:
      write_results(results, workdir, evaluated_as, specs=specs, config=self.config,
                    measures=self.measures, tag=f"optical_jax-{self.config.loss}")
    return results


def write_results(results: Mapping[str, CollectionResult], workdir: Path,
                  evaluated_as: Evaluated, *, specs, config, measures=DEFAULT_MEASURES,
                  tag: str = "optical_jax") -> Path:
  """The evaluation of `evaluated_as` in `results_dir(workdir, step)` (see the module
  docstring; `NAME, MaxSim` entries for reranked collections): run files first, `eval.json`
  last, each replaced whole. Prints the table and where it wrote; returns the directory."""
  out = Workdir(workdir).results(evaluated_as.step)
  directory = out.root
  values, per_query = {}, {}
  for name, result in results.items():
    write_run(result.run, out.run(name), tag=tag)
    values[name], per_query[name] = result.values, result.per_query
    if result.maxsim is not None:
      values[f"{name}, MaxSim"] = result.maxsim.values
      per_query[f"{name}, MaxSim"] = result.maxsim.per_query
  if not values:
    return directory
  memo = CacheDir(config.runtime.cache_dir).root
  files = {spec.name: {field: {"path": str(Path(spec[field]).expanduser()),
                               "sha256": file_digest(Path(spec[field]).expanduser(),
                                                     memo_dir=memo, algorithm="sha256")}
                       for field in ("topics", "corpus", "qrels")}
           for spec in specs if spec.name in results}
  record = {**dataclasses.asdict(evaluated_as), "measures": list(measures), "results": values,
            "collections": files, "config": json.loads(config.to_json_best_effort())}
  write_text_atomic(out.per_query, json.dumps(per_query) + "\n")
  write_text_atomic(out.summary, json.dumps(record, indent=2) + "\n")
  rows = [{"collection": name, **v} for name, v in values.items()]
  print(format_table(rows, ["collection", *measures]), flush=True)
  written = ", ".join(str(p.relative_to(directory))
                      for p in (out.summary, out.per_query, *map(out.run, results)))
  print(f"step {evaluated_as.step} ({evaluated_as.which}): wrote {directory} ({written})",
        flush=True)
  return directory
