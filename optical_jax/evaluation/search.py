"""Exact top-k dense search and reranking of runs.

One top-k implementation serves corpus chunks, processes and whole matrices: scores are
computed in float64 on the host (a float32 matmul's summation order depends on which documents
share a chunk) and equal scores are broken by docid in trec_eval's order, so a run is the same
however the corpus was cut.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.pooling import l2_normalize


def docid_ranks(doc_ids: Sequence[str]) -> np.ndarray:
  """Each document's place `[num_docs]` in trec_eval's tie order (docid descending): the key
  that decides which of equally scored documents make the top k, whatever the chunking."""
  order = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i].encode("utf-8"), reverse=True)
  ranks = np.empty(len(doc_ids), np.int64)
  ranks[order] = np.arange(len(doc_ids))
  return ranks


def score_chunk(query_vectors: np.ndarray, doc_vectors: np.ndarray,
                similarity: str = "dot") -> np.ndarray:
  """Scores `[Q, m]` (float32) of queries `[Q, d]` against documents `[m, d]`, computed in
  float64 on the host: a pair's float32 score then does not depend on which other documents
  share its chunk (a float32 matmul's summation order does), so every split of the corpus
  ranks alike."""
  if similarity not in ("dot", "cosine"):
    raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
  q, d = np.asarray(query_vectors, np.float64), np.asarray(doc_vectors, np.float64)
  if q.shape[1:] != d.shape[1:]:
    raise ValueError(f"queries dim {q.shape[1:]} != documents dim {d.shape[1:]}")
  if similarity == "cosine":
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
  return (q @ d.T).astype(np.float32)


def empty_top_k(num_queries: int) -> tuple[np.ndarray, np.ndarray]:
  """No documents yet: scores `[Q, 0]` float32 and document indices `[Q, 0]` int64."""
  return np.zeros((num_queries, 0), np.float32), np.zeros((num_queries, 0), np.int64)


def merge_top_k(best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, index: np.ndarray,
                ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The exact top `k` of `best` (scores, indices `[Q, k']`) and new candidates (`scores`,
  `index` `[Q, m]`; index -1: none), by score descending, ties by `ranks[index]` ascending
  (`docid_ranks`). Returns scores and indices `[Q, min(k, k' + m)]`."""
  scores = np.concatenate([best[0], scores], axis=1)
  index = np.concatenate([best[1], index], axis=1)
  if 0 < k and 2 * k < scores.shape[1]:
    # Only what can make the top k is sorted: per row every score reaching its k-th best
    # (ties included), found by partitioning; the sort below then sees `width` columns, not
    # a whole chunk's.
    kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k]
    width = int((scores >= kth[:, None]).sum(axis=1).max())
    if width < scores.shape[1]:
      keep = np.argpartition(-scores, width - 1, axis=1)[:, :width]
      scores = np.take_along_axis(scores, keep, axis=1)
      index = np.take_along_axis(index, keep, axis=1)
  tie = np.where(index >= 0, ranks[np.maximum(index, 0)], len(ranks))
  keep = np.lexsort((tie, -scores.astype(np.float64)), axis=1)[:, :k]
  return np.take_along_axis(scores, keep, axis=1), np.take_along_axis(index, keep, axis=1)


def gather_top_k(best: tuple[np.ndarray, np.ndarray], ranks: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
  """Every process's local top-k merged exactly (one collective per call, so all processes
  call it). Lists are padded to `k` with index -1 to gather in one shape."""
  if jax.process_count() == 1:
    return best
  from jax.experimental import multihost_utils
  pad = k - best[0].shape[1]
  scores = np.pad(best[0], ((0, 0), (0, pad)), constant_values=-np.inf)
  index = np.pad(best[1], ((0, 0), (0, pad)), constant_values=-1).astype(np.int32)
  all_scores, all_index = (np.asarray(x) for x in multihost_utils.process_allgather(
      (scores, index)))
  merged = empty_top_k(scores.shape[0])
  for p in range(all_scores.shape[0]):
    merged = merge_top_k(merged, all_scores[p], all_index[p].astype(np.int64), ranks, k)
  return merged


def as_run(best: tuple[np.ndarray, np.ndarray], query_ids: Sequence[str],
           doc_ids: Sequence[str]) -> dict[str, dict[str, float]]:
  """`{qid: {docid: score}}` of a top-k (indices -1 are left out)."""
  return {qid: {doc_ids[j]: float(s) for j, s in zip(best[1][row], best[0][row]) if j >= 0}
          for row, qid in enumerate(query_ids)}


def dense_search(query_vectors: np.ndarray, doc_vectors: np.ndarray, query_ids: Sequence[str],
                 doc_ids: Sequence[str], *, k: int = 100, chunk_size: int = 8192,
                 similarity: str = "dot") -> dict[str, dict[str, float]]:
  """Top-`k` documents per query as a run, from queries `[Q, d]` and documents `[N, d]`
  (e.g. a memmap): `chunk_size` documents at a time, so memory stays
  `O(Q * (k + chunk_size))` whatever the corpus size; ties go by docid as in trec_eval."""
  if len(query_ids) != len(query_vectors) or len(doc_ids) != len(doc_vectors):
    raise ValueError("ids and vectors must have the same length")
  ranks, best = docid_ranks(doc_ids), empty_top_k(len(query_ids))
  for start in range(0, len(doc_ids), chunk_size):
    chunk = np.asarray(doc_vectors[start:start + chunk_size])
    index = np.broadcast_to(np.arange(start, start + len(chunk)), (len(query_ids), len(chunk)))
    best = merge_top_k(best, score_chunk(query_vectors, chunk, similarity), index, ranks, k)
  return as_run(best, query_ids, doc_ids)


def rerank_run(run: Mapping[str, Mapping[str, float]],
               score_fn: Callable[[str, list[str]], np.ndarray], *,
               depth: int = 100) -> dict[str, dict[str, float]]:
  """Rescores each query's top-`depth` candidates (e.g. BM25's) with `score_fn(qid, docids)`."""
  from optical_jax.evaluation.metrics import trec_ranking
  reranked = {}
  for qid, candidates in run.items():
    docids = trec_ranking(candidates)[:depth]
    scores = np.asarray(score_fn(qid, docids), np.float64)
    reranked[qid] = {d: float(s) for d, s in zip(docids, scores)}
  return reranked


def dense_reranker(query_vectors: Mapping[str, np.ndarray], doc_vectors: Mapping[str, np.ndarray],
                   similarity: str = "dot") -> Callable[[str, list[str]], np.ndarray]:
  """A `score_fn` for `rerank_run` from pooled vectors keyed by id."""
  def score(qid, docids):
    docs = np.stack([doc_vectors[d] for d in docids])
    return score_chunk(np.asarray(query_vectors[qid])[None], docs, similarity)[0]
  return score


def _power_of_two(n: int, floor: int) -> int:
  """`n` rounded up to a power of two (at least `floor`): a rerank compiles for a handful of
  shapes instead of once per query length and candidate width."""
  width = floor
  while width < n:
    width *= 2
  return width


@functools.partial(jax.jit, static_argnames="candidates")
def _maxsim_flat(query, query_mask, tokens, index, segment, *, candidates: int):
  """MaxSim of one query `[1, Lq, d]` against `candidates` documents whose L2-normalised tokens
  are rows `index` `[S]` of `tokens`; `segment` `[S]` (sorted) names each row's candidate, and
  the value `candidates` marks padding."""
  sims = tokens[index] @ l2_normalize(query[0]).T  # [S, Lq]
  best = jax.ops.segment_max(sims, segment, num_segments=candidates + 1,
                             indices_are_sorted=True)[:candidates]
  best = jnp.where(jnp.isfinite(best), best, 0.0)  # a document with no token
  return jnp.sum(jnp.where(query_mask[0][None], best, 0.0), axis=-1)


def maxsim_reranker(query_tokens: Mapping[str, np.ndarray], doc_tokens: Mapping[str, np.ndarray]
                    ) -> Callable[[str, list[str]], np.ndarray]:
  """A `score_fn` for `rerank_run` with ColBERT late interaction over token embeddings (cosine
  similarities, as `maxsim_scores`). The documents' tokens are normalised and concatenated on
  the device once, unpadded; each query gathers its candidates' tokens there and takes the
  best match per candidate (a segment max), so no candidate is padded to the longest and a
  rerank compiles for a few padded shapes (query length, candidates' token count) only."""
  ids = list(doc_tokens)
  position = {d: i for i, d in enumerate(ids)}
  lengths = np.array([len(doc_tokens[d]) for d in ids], np.int64)
  starts = np.cumsum(lengths) - lengths
  dim = next(iter(doc_tokens.values())).shape[1] if ids else 0
  tokens = np.concatenate([np.asarray(doc_tokens[d], np.float32).reshape(-1, dim) for d in ids]
                          + [np.zeros((1, dim), np.float32)])  # the last row: padding
  tokens[:-1] /= np.maximum(np.linalg.norm(tokens[:-1], axis=-1, keepdims=True), 1e-12)
  tokens, pad_row = jax.device_put(tokens), int(lengths.sum())

  def score(qid, docids):
    q = query_tokens[qid]
    query = np.zeros((1, _power_of_two(len(q), 16), q.shape[1]), np.float32)
    query[0, :len(q)] = q
    query_mask = np.arange(query.shape[1])[None] < len(q)
    rows = np.array([position[d] for d in docids], np.int64)
    n = lengths[rows]
    total, size = int(n.sum()), _power_of_two(int(n.sum()), 1024)
    candidates = _power_of_two(len(docids), 8)
    index = np.full(size, pad_row, np.int32)
    segment = np.full(size, candidates, np.int32)
    index[:total] = np.repeat(starts[rows] - (np.cumsum(n) - n), n) + np.arange(total)
    segment[:total] = np.repeat(np.arange(len(docids)), n)
    return np.asarray(_maxsim_flat(query, query_mask, tokens, index, segment,
                                   candidates=candidates))[:len(docids)]
  return score
