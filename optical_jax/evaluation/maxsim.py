"""MaxSim reranking at corpus scale: only the candidates' passages are encoded to tokens.

A dense run's top `depth` per query is rescored by ColBERT late interaction (the query
encoder's query tokens against the passage encoder's passage tokens, cosine). No corpus-wide
token store: the union of the queries' candidates (CIRAL test-B: 239 queries x 100 ≈ 24k
passages of 827,552) is read from the corpus's token ids, dealt to the processes, and encoded
`group` passages at a time; each group's tokens score the queries that hold them and are
dropped, so memory is bounded by one group whatever the corpus. Each process scores its
share; one all-gather merges the scores, so the run is the same on any number of processes.
"""

from __future__ import annotations

from typing import Mapping, MutableMapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from optical_jax.evaluation.metrics import trec_ranking
from optical_jax.evaluation.search import maxsim_reranker
from optical_jax.evaluation.token_cache import CorpusTokens

GROUP = 512  # passages encoded and scored at a time (≈ 512 x 256 x 384 float32 = 200 MB)


def candidates(run: Mapping[str, Mapping[str, float]], query_ids: Sequence[str],
               position: Mapping[str, int], depth: int) -> np.ndarray:
  """int64 `[len(query_ids), depth]`: the corpus rows of each query's top `depth` in `run`
  (trec_eval's order), -1 past its list."""
  rows = np.full((len(query_ids), depth), -1, np.int64)
  for i, qid in enumerate(query_ids):
    ranked = trec_ranking(run.get(qid, {}))[:depth]
    rows[i, :len(ranked)] = [position[d] for d in ranked]
  return rows


def candidate_ids(corpus: CorpusTokens, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The token ids (flat, offsets) of corpus rows `rows` (ascending), read a chunk of the
  corpus at a time (from its token cache once the dense pass made it)."""
  pieces, lengths = [], []
  chunks = corpus.chunks(32768)
  try:
    for start, flat, offsets in chunks:
      if len(lengths) == len(rows):
        break
      inside = rows[(rows >= start) & (rows < start + len(offsets) - 1)] - start
      if len(inside):  # gathered (a copy): a view would keep the whole chunk in memory
        starts, counts = offsets[inside], offsets[inside + 1] - offsets[inside]
        first = np.cumsum(counts) - counts  # where each row starts in the gathered ids
        pieces.append(flat[np.repeat(starts - first, counts) + np.arange(counts.sum())])
        lengths.extend(counts)
  finally:  # stopped early: the tokenizer thread stops now
    getattr(chunks, "close", lambda: None)()
  flat = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
  return flat, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _allgather_max(scores: np.ndarray) -> np.ndarray:
  """Each entry from the one process that scored it (the others hold -inf)."""
  if jax.process_count() == 1:
    return scores
  from jax.experimental import multihost_utils
  return np.max(np.asarray(multihost_utils.process_allgather(scores)), axis=0)


def maxsim_rerank(run: Mapping[str, Mapping[str, float]],
                  query_tokens: Mapping[str, np.ndarray], corpus: CorpusTokens, doc_encoder, *,
                  depth: int, group: int = GROUP, memo: MutableMapping | None = None,
                  progress: bool = False) -> dict[str, dict[str, float]]:
  """`run`'s top `depth` per query rescored by MaxSim: `{qid: {docid: score}}`.

  `query_tokens`: `{qid: [length, dim]}` (every process holds them all; computed once).
  `corpus`: the passages' token ids (`TextEncoder.corpus`), `doc_encoder` the `BoundEncoder`
  of the passage side. `memo` (a dict) keeps passages' tokens across calls for a frozen
  encoder on a small corpus (the demo's teacher rows); leave it out at corpus scale.
  """
  query_ids = list(query_tokens)
  docids = corpus.docids
  position = {d: i for i, d in enumerate(docids)}
  rows = candidates(run, query_ids, position, depth)
  unique = np.unique(rows[rows >= 0])
  part, parts = jax.process_index(), jax.process_count()
  mine = np.array_split(unique, parts)[part]
  scores = np.full(rows.shape, -np.inf, np.float32)
  keep, memo = memo is not None, {} if memo is None else memo
  todo = np.array([r for r in mine if docids[r] not in memo], np.int64)
  flat, offsets = candidate_ids(corpus, todo)
  where = {int(r): i for i, r in enumerate(todo)}
  with tqdm(total=len(mine), desc="MaxSim passages", unit="passage", leave=False,
            disable=not progress) as bar:
    for begin in range(0, len(mine), group):
      block = mine[begin:begin + group]
      missing = [int(r) for r in block if docids[r] not in memo]
      tokens = {docids[r]: memo[docids[r]] for r in block if docids[r] in memo}
      if missing:
        index = np.array([where[r] for r in missing])
        sub_offsets = np.concatenate([[0], np.cumsum(offsets[index + 1] - offsets[index])])
        sub_flat = np.concatenate([flat[offsets[i]:offsets[i + 1]] for i in index])
        for r, t in zip(missing, doc_encoder.encode_token_ids(sub_flat, sub_offsets)):
          tokens[docids[r]] = t
          if keep:
            memo[docids[r]] = t
      score = maxsim_reranker(query_tokens, tokens)
      inside = np.isin(rows, block)
      for q in np.flatnonzero(inside.any(axis=1)):
        cols = np.flatnonzero(inside[q])
        scores[q, cols] = score(query_ids[q], [docids[r] for r in rows[q, cols]])
      bar.update(len(block))
  scores = _allgather_max(scores)
  return {qid: {docids[r]: float(s) for r, s in zip(rows[i], scores[i]) if r >= 0}
          for i, qid in enumerate(query_ids)}
