"""Collections checked before any slow work: their names usable as file names, every
configured collection's topics and qrels parsed in full and its corpus scanned once (ids
unique and without whitespace, fields present, judged documents present in the corpus), so
a malformed file fails before the first training step, naming file and line, and a qrels
made for another corpus warns at once instead of scoring 0.

The corpus scan is cached by the file's content fingerprint (`corpus_files.scan_corpus`): a
rerun, or another collection on the same corpus, does not read it again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

from optical_jax.config import ConfigError
from optical_jax.evaluation.corpus_files import CorpusScan, scan_corpus
from optical_jax.evaluation.io import read_qrels, read_topics
from optical_jax.files.fingerprint import file_version
from optical_jax.files.layout import CacheDir

log = logging.getLogger("optical_jax")
_warned: set[tuple[str, str]] = set()  # (qrels version, corpus fingerprint) warned about


@dataclasses.dataclass(frozen=True)
class CollectionSummary:
  """What `check_collections` found in one collection."""

  name: str
  topics: int  # queries in the topics file
  judged_queries: int  # of them, those the qrels judge
  judgments: int  # (query, document) pairs judged
  relevant: int  # of them, relevance > 0
  passages: int  # documents in the corpus
  judged_docids: int  # distinct documents judged
  absent_docids: int  # of them, absent from the corpus
  corpus: str
  corpus_cached: bool  # the corpus scan came from the cache
  seconds: float  # this collection's check, the corpus scan included

  def __str__(self) -> str:
    present = ("all judged documents in the corpus" if not self.absent_docids else
               f"{self.absent_docids:,} of {self.judged_docids:,} judged documents ABSENT from "
               "the corpus")
    scan = "scan cached" if self.corpus_cached else f"scanned in {self.seconds:.1f} s"
    return (f"collection {self.name}: {self.topics:,} topics ({self.judged_queries:,} judged), "
            f"{self.judgments:,} judgments ({self.relevant:,} relevant), corpus "
            f"{self.passages:,} passages ({scan}); {present}")


def absent_judged(qrels: Mapping[str, Mapping[str, int]], scan: CorpusScan, *,
                  qrels_path: str | Path, judged: Sequence[str] | None = None) -> int:
  """How many distinct judged documents of `qrels` the scanned corpus lacks; warns (logger
  "optical_jax", once per qrels file version and corpus content in this process) naming how
  many of how many, and a few of them: such judgments can never be retrieved, so measures
  are low or 0 without any other sign."""
  docids = scan.docid_set()
  judged = sorted({d for by_doc in qrels.values() for d in by_doc}) if judged is None else judged
  absent = [d for d in judged if d not in docids]
  if absent:
    try:
      version = file_version(qrels_path)
    except OSError:
      version = str(qrels_path)
    if (version, scan.fingerprint) not in _warned:
      _warned.add((version, scan.fingerprint))
      relevant = sum(1 for by_doc in qrels.values() for d, rel in by_doc.items()
                     if rel > 0 and d not in docids)
      log.warning("%s: %d of %d judged documents (%d relevant judgments) are absent from the "
                  "corpus %s (e.g. %s): they can never be retrieved, so every measure is lower "
                  "than it should be; are the qrels made for this corpus version and its docid "
                  "format?", qrels_path, len(absent), len(judged), relevant, scan.path,
                  ", ".join(repr(d) for d in absent[:3]))
  return len(absent)


def check_names(specs: Sequence[Mapping]) -> None:
  """Raises `ConfigError` for a collection name that cannot name its files: a name is the
  run file's (`runs/NAME.trec`) and its results' key, so it is one path component (no '/',
  '\\', control characters, '.' or '..') and no two collections share one."""
  seen = set()
  for i, spec in enumerate(specs):
    name = spec.get("name", "")
    where = f"config.eval.collections[{i}].name {name!r}"
    if not isinstance(name, str) or not name.strip():
      raise ConfigError(f"{where}: each collection needs a name")
    if name in (".", "..") or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name):
      raise ConfigError(f"{where}: a collection's name is its run file's name "
                        "(runs/NAME.trec), so it cannot hold '/', '\\' or control characters, "
                        "or be '.' or '..'")
    if name in seen:
      raise ConfigError(f"{where}: another collection has this name; their run files and "
                        "results would overwrite each other: give each its own")
    seen.add(name)


def check_collections(specs: Sequence[Mapping], cache_dir: str | Path | None = None
                      ) -> list[CollectionSummary]:
  """Checks every collection of `specs` (`collections.collection_specs(config)`: `name`,
  `topics`, `qrels`, `corpus`): topics and qrels parsed in full, the corpus scanned once
  (cached under `cache_dir/corpus` by content; `cache_dir` is `runtime.cache_dir`, None: no
  cache). Logs one line per collection (logger "optical_jax", INFO) and a warning for judged
  documents absent from the corpus; returns the summaries.

  Raises:
    ConfigError: a collection name that cannot name its files (`check_names`).
    DataFormatError: a malformed topics, qrels or corpus file, naming `path:line`.
  """
  check_names(specs)
  corpus_cache = CacheDir(cache_dir).corpus.root if cache_dir is not None else None
  summaries = []
  for spec in specs:
    start = time.perf_counter()
    topics = read_topics(Path(spec["topics"]).expanduser())
    qrels_path = Path(spec["qrels"]).expanduser()
    qrels = read_qrels(qrels_path, topics=topics)
    scan = scan_corpus(Path(spec["corpus"]).expanduser(), corpus_cache)
    judged = sorted({d for by_doc in qrels.values() for d in by_doc})
    absent = absent_judged(qrels, scan, qrels_path=qrels_path, judged=judged)
    summary = CollectionSummary(
        name=spec["name"], topics=len(topics), judged_queries=len(qrels),
        judgments=sum(len(by_doc) for by_doc in qrels.values()),
        relevant=sum(1 for by_doc in qrels.values() for rel in by_doc.values() if rel > 0),
        passages=scan.passages, judged_docids=len(judged), absent_docids=absent,
        corpus=str(scan.path), corpus_cached=scan.cached,
        seconds=time.perf_counter() - start)
    log.info("%s", summary)
    summaries.append(summary)
  return summaries
