"""Readers and writers for topics, corpora, qrels and TREC run files.

Every error names the file and the line (`path:line: what is wrong`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterator, Mapping

from optical_jax.files.fileio import atomic_writer
from optical_jax.files.textfiles import DataFormatError, PathLike, is_jsonl, json_record, text_lines

# Column names a TSV's first line may carry instead of data (`qid<TAB>query`, pandas'
# `to_csv(sep="\t")`, BEIR's `query-id`): compared lower-case.
_ID_COLUMNS = {"qid", "query_id", "queryid", "query-id", "topic_id", "topicid", "id", "_id",
               "docid", "doc_id", "doc-id", "docno", "document_id", "pid", "passage_id"}
_TEXT_COLUMNS = {"query", "text", "title", "question", "query_text", "contents", "content",
                 "body", "passage", "document", "doc", "doc_text"}


# TREC run and qrels files separate their columns by whitespace: an id holding any would shift
# every column after it in the run files written from it.
ID_WHITESPACE = re.compile(r"\s")


def check_id(path, number, value: str, what: str) -> str:
  """`value`, a query or document id read at `path:number`: non-empty, without whitespace."""
  if not value:
    raise DataFormatError(f"{path}:{number}: empty {what}")
  if ID_WHITESPACE.search(value):
    raise DataFormatError(f"{path}:{number}: {what} {value!r} contains whitespace; TREC run and "
                          "qrels files separate columns by whitespace, so ids cannot hold spaces, "
                          "tabs or newlines")
  return value


def _is_header(parts: list[str]) -> bool:
  """Whether a TSV line names its columns (an id column, then only text columns)."""
  rest = [p.strip().lower() for p in parts[1:] if p.strip()]
  return parts[0].strip().lower() in _ID_COLUMNS and bool(rest) and all(
      p in _TEXT_COLUMNS for p in rest)


def _field(path, number, record: Mapping, names: tuple[str, ...], what: str, *,
           is_id: bool = False) -> str:
  """The first of `names` in `record`, which must be a string (or, for an id, an integer:
  BEIR corpora number their documents); str() of a list or dict would pass for text."""
  for name in names:
    if name not in record:
      continue
    value = record[name]
    if isinstance(value, str):
      return value
    if is_id and isinstance(value, int) and not isinstance(value, bool):
      return str(value)
    expected = "a string or an integer" if is_id else "a string"
    raise DataFormatError(f"{path}:{number}: {what} field {name!r} must be {expected}, got "
                          f"{json.dumps(value)[:60]}")
  raise DataFormatError(f"{path}:{number}: no {what} field (expected one of {', '.join(names)})")


def read_topics(path: PathLike) -> dict[str, str]:
  """Queries as `{qid: text}` from TSV (`qid<TAB>text`) or JSONL (`qid`/`_id`, `text`/`query`).
  A TSV's first line that names its columns (`qid<TAB>query`, `id<TAB>text`, any case) is a
  header, not a query."""
  topics: dict[str, str] = {}
  for index, (number, line) in enumerate(text_lines(path)):
    if is_jsonl(path):
      record = json_record(path, number, line)
      qid = _field(path, number, record, ("qid", "query_id", "_id", "id"), "query id",
                   is_id=True)
      text = _field(path, number, record, ("text", "query", "title"), "query text")
    else:
      parts = line.split("\t")
      if len(parts) < 2:
        raise DataFormatError(f"{path}:{number}: expected 'qid<TAB>text', got {line[:60]!r}")
      if index == 0 and _is_header(parts):
        continue  # kept, it would be a phantom query "qid" in every run file
      qid, text = parts[0].strip(), " ".join(parts[1:])
    check_id(path, number, qid, "query id")
    if not text.strip():
      raise DataFormatError(f"{path}:{number}: query {qid!r} has an empty text")
    if qid in topics:
      raise DataFormatError(f"{path}:{number}: duplicate query id {qid!r}")
    topics[qid] = text.strip()
  return topics


def iter_corpus(path: PathLike) -> Iterator[tuple[int, str, str]]:
  """(line number, docid, text) of each document in file order, streamed (memory holds the
  docids seen, never the texts), from TSV (`docid<TAB>text` or `docid<TAB>title<TAB>text`) or
  JSONL (`docid`/`_id`, optional `title`, `text`); title and text are joined. A TSV's first
  line that names its columns (`docid<TAB>text`, `id<TAB>title<TAB>text`) is a header. Ids
  must be present and unique and texts non-empty; errors name `path:line`."""
  seen: set[str] = set()
  jsonl = is_jsonl(path)
  for index, (number, line) in enumerate(text_lines(path)):
    if jsonl:
      record = json_record(path, number, line)
      docid = _field(path, number, record, ("docid", "doc_id", "_id", "id"),
                     "document id", is_id=True)
      body = _field(path, number, record, ("text", "contents", "body"), "text")
      title = record.get("title")  # optional: absent, null or a string
      if title is not None and not isinstance(title, str):
        raise DataFormatError(f"{path}:{number}: title field 'title' must be a string, got "
                              f"{json.dumps(title)[:60]}")
      title = (title or "").strip()
      text = f"{title} {body}".strip() if title else body.strip()
    else:
      parts = line.split("\t")
      if len(parts) < 2:
        raise DataFormatError(f"{path}:{number}: expected 'docid<TAB>text', got {line[:60]!r}")
      if index == 0 and _is_header(parts):
        continue
      docid, text = parts[0].strip(), " ".join(p.strip() for p in parts[1:] if p.strip())
    check_id(path, number, docid, "document id")
    if not text:
      raise DataFormatError(f"{path}:{number}: document {docid!r} has an empty text")
    if docid in seen:
      raise DataFormatError(f"{path}:{number}: duplicate document id {docid!r}")
    seen.add(docid)
    yield number, docid, text


def read_corpus(path: PathLike) -> dict[str, str]:
  """Documents as `{docid: text}` (`iter_corpus`), all in memory: small collections."""
  return {docid: text for _, docid, text in iter_corpus(path)}


def read_qrels(path: PathLike, *, topics: Mapping[str, str] | None = None
               ) -> dict[str, dict[str, int]]:
  """TREC qrels (`qid iteration docid relevance`) as `{qid: {docid: relevance}}`.

  With `topics`, a judged query absent from them is an error naming its line.
  """
  qrels: dict[str, dict[str, int]] = {}
  for number, line in text_lines(path):
    parts = line.split()
    if len(parts) != 4:
      raise DataFormatError(f"{path}:{number}: expected 4 columns 'qid 0 docid relevance', "
                            f"got {len(parts)}")
    qid, _, docid, rel = parts
    try:
      relevance = int(rel)
    except ValueError:
      raise DataFormatError(f"{path}:{number}: relevance {rel!r} is not an integer") from None
    if topics is not None and qid not in topics:
      raise DataFormatError(f"{path}:{number}: query {qid!r} is judged but absent from the "
                            "topics")
    judged = qrels.setdefault(qid, {})
    if docid in judged:
      raise DataFormatError(f"{path}:{number}: duplicate judgment of {docid!r} for query "
                            f"{qid!r}")
    judged[docid] = relevance
  return qrels


def read_run(path: PathLike) -> dict[str, dict[str, float]]:
  """A TREC run (`qid Q0 docid rank score tag`) as `{qid: {docid: score}}`; a NaN or
  infinite score is an error naming its line."""
  run: dict[str, dict[str, float]] = {}
  for number, line in text_lines(path):
    parts = line.split()
    if len(parts) != 6:
      raise DataFormatError(f"{path}:{number}: expected 6 columns 'qid Q0 docid rank score "
                            f"tag', got {len(parts)}")
    qid, _, docid, _, score, _ = parts
    try:
      value = float(score)
    except ValueError:
      raise DataFormatError(f"{path}:{number}: score {score!r} is not a number") from None
    if not math.isfinite(value):  # no ranking has a place for it; trec_eval's would differ
      raise DataFormatError(f"{path}:{number}: score {score!r} of document {docid!r} for query "
                            f"{qid!r} is not a finite number; fix the system that wrote the run")
    ranked = run.setdefault(qid, {})
    if docid in ranked:
      raise DataFormatError(f"{path}:{number}: document {docid!r} appears twice for query "
                            f"{qid!r}")
    ranked[docid] = value
  return run


def write_run(run: Mapping[str, Mapping[str, float]], path: PathLike, *,
              tag: str = "optical_jax") -> Path:
  """Writes a TREC run file, documents in trec_eval's order with ranks from 1."""
  from optical_jax.evaluation.metrics import trec_ranking
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with atomic_writer(path) as f:  # an interrupted evaluation leaves the previous run file
    for qid in run:
      for rank, docid in enumerate(trec_ranking(run[qid]), start=1):
        f.write(f"{qid} Q0 {docid} {rank} {float(run[qid][docid]):.6f} {tag}\n")
  return path


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path: PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with atomic_writer(path) as f:
    for qid, judged in qrels.items():
      for docid, rel in judged.items():
        f.write(f"{qid} 0 {docid} {rel}\n")
  return path


def write_tsv(rows: Mapping[str, str], path: PathLike) -> Path:
  """`id<TAB>text` lines (topics or corpus); tabs and newlines in texts become spaces."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with atomic_writer(path) as f:
    for key, text in rows.items():
      f.write(f"{key}\t{' '.join(text.split())}\n")
  return path
