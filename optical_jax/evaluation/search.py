"""Exact top-k dense search and reranking of runs.

A run's scores are float64 dot products rounded to float32 (a float32 matmul's summation order
depends on which documents share a chunk), and equal scores are broken by docid in trec_eval's
order, so a run is the same however the corpus was cut. The corpus is searched on a device
(`DeviceTopK`): float32 scores and a running top `2k` per query stay there, and only those
candidates come back, to be rescored in float64 and ranked on the host; a query whose k-th
score is too close to the device's cut-off for float32's rounding to be ruled out is searched
again on the host (`merge_top_k`), so the result is the host search's exactly.
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


# Rounding of a float32 dot product of width d (any summation order, also TPU's "highest"
# precision): at most about d * 2**-24 * |q| * |x|; twice that, with margin, rules it out.
_FLOAT32_DOT_ERROR = 8 * 2.0**-24


@functools.partial(jax.jit, static_argnames="cosine", donate_argnums=0)
def top_k_step(state, queries, chunk, rows, *, cosine: bool):
  """`state` (scores `[Q, K]`, rows `[Q, K]`, vectors `[Q, K, d]`, largest document norm)
  merged with `chunk` `[m, d]` of corpus rows `rows` `[m]` (-1: padding): the top K by float32
  score, the candidates' own vectors kept for the host's float64 rescoring."""
  scores, index, vectors, norm = state
  norms = jnp.linalg.norm(chunk, axis=1)
  unit = chunk / jnp.maximum(norms, 1e-12)[:, None] if cosine else chunk
  new = jnp.matmul(queries, unit.T, precision=jax.lax.Precision.HIGHEST)
  new = jnp.where(rows[None] >= 0, new, -jnp.inf)
  new, pick = jax.lax.top_k(new, min(scores.shape[1], chunk.shape[0]))
  scores = jnp.concatenate([scores, new], axis=1)
  index = jnp.concatenate([index, rows[pick]], axis=1)
  vectors = jnp.concatenate([vectors, chunk[pick]], axis=1)
  scores, keep = jax.lax.top_k(scores, index.shape[1] - new.shape[1])
  norm = jnp.maximum(norm, jnp.max(jnp.where(rows >= 0, 1.0 if cosine else norms, 0.0)))
  return (scores, jnp.take_along_axis(index, keep, axis=1),
          jnp.take_along_axis(vectors, keep[..., None], axis=1), norm)


class DeviceTopK:
  """The exact top `k` of queries `[Q, d]` against corpus chunks added one at a time
  (`add`), searched on `device` (the first local device by default): per chunk a float32
  matmul and `lax.top_k`, merged there into a running top `2k`; `result` reads those back
  once, rescores them in float64 as `score_chunk` does and ranks them by `merge_top_k`'s
  order. Queries it cannot prove exact (`result`'s second value) need the host search."""

  def __init__(self, query_vectors: np.ndarray, k: int, similarity: str = "dot",
               device=None):
    if similarity not in ("dot", "cosine"):
      raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
    self.query_vectors = np.asarray(query_vectors, np.float32)
    self.k, self.similarity, self.seen = k, similarity, 0
    self.device = device or jax.local_devices()[0]
    self.width = max(2 * k, k + 16)
    num_queries, dim = self.query_vectors.shape
    queries = self.query_vectors
    if similarity == "cosine":
      queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    self.queries = jax.device_put(queries, self.device)
    self.state = jax.device_put((np.full((num_queries, self.width), -np.inf, np.float32),
                                 np.full((num_queries, self.width), -1, np.int32),
                                 np.zeros((num_queries, self.width, dim), np.float32),
                                 np.float32(0)), self.device)

  def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
    """Corpus rows `rows` `[m]` (their indices in the corpus) with vectors `[m, d]`;
    padded to a power of two, so a search compiles for a few chunk sizes only."""
    size = _power_of_two(len(rows), 256)
    chunk = np.zeros((size, self.query_vectors.shape[1]), np.float32)
    chunk[:len(rows)] = vectors
    padded = np.full(size, -1, np.int32)
    padded[:len(rows)] = rows
    self.state = top_k_step(self.state, self.queries, jax.device_put(chunk, self.device),
                                    jax.device_put(padded, self.device),
                                    cosine=self.similarity == "cosine")
    self.seen += len(rows)

  def result(self, ranks: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """`(best, uncertain)`: the top k as `merge_top_k` gives it (scores, indices `[Q, k']`)
    and `[Q]` bool, the queries where a document the device left out might belong in it."""
    scores, index, vectors, norm = jax.device_get(self.state)
    exact = np.stack([score_chunk(self.query_vectors[q:q + 1], vectors[q], self.similarity)[0]
                      for q in range(len(index))]) if len(index) else scores
    index = index.astype(np.int64)
    exact = np.where(index >= 0, exact, -np.inf).astype(np.float32)
    best = merge_top_k(empty_top_k(len(index)), exact, index, ranks, self.k)
    if self.seen <= self.width or self.k == 0:
      return best, np.zeros(len(index), bool)  # every document is a candidate
    query_norm = (1.0 if self.similarity == "cosine"
                  else np.linalg.norm(self.query_vectors.astype(np.float64), axis=1))
    error = (_FLOAT32_DOT_ERROR * self.query_vectors.shape[1] * query_norm
             * float(norm) * 1.01)
    # A left-out document scored at most the device's cut-off plus the error; it is beaten
    # if that is below the float32 number just under the k-th rescored score (no tie).
    kth = np.nextafter(best[0][:, self.k - 1], np.float32(-np.inf))
    return best, ~(scores[:, -1].astype(np.float64) + error < kth.astype(np.float64))


def gather_top_k(best: tuple[np.ndarray, np.ndarray], ranks: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
  """Every process's local top-k merged exactly (one collective per call, so all processes
  call it). Lists are padded to `k` with index -1 to gather in one shape."""
  if jax.process_count() == 1:
    return best
  from jax.experimental import multihost_utils
  # Each list is sorted, so its first k are all it contributes (a device top-k may be wider,
  # padded with index -1, when a corpus has fewer than k documents).
  pad = k - min(k, best[0].shape[1])
  scores = np.pad(best[0][:, :k], ((0, 0), (0, pad)), constant_values=-np.inf)
  index = np.pad(best[1][:, :k], ((0, 0), (0, pad)), constant_values=-1).astype(np.int32)
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
  ranks, search = docid_ranks(doc_ids), DeviceTopK(query_vectors, k, similarity)
  chunks = lambda: ((np.arange(start, min(start + chunk_size, len(doc_ids))),
                     np.asarray(doc_vectors[start:start + chunk_size]))
                    for start in range(0, len(doc_ids), chunk_size))
  for rows, chunk in chunks():
    search.add(rows, chunk)
  best, uncertain = search.result(ranks)
  return as_run(host_search(best, uncertain, query_vectors, chunks(), ranks, k, similarity),
                query_ids, doc_ids)


def host_search(best: tuple[np.ndarray, np.ndarray], uncertain: np.ndarray,
                query_vectors: np.ndarray, chunks, ranks: np.ndarray, k: int,
                similarity: str = "dot") -> tuple[np.ndarray, np.ndarray]:
  """`best` with the rows of `uncertain` queries searched again on the host over `chunks`
  (an iterable of (corpus rows, vectors)), in float64: `DeviceTopK`'s rare fallback."""
  if not uncertain.any():
    return best
  queries = np.asarray(query_vectors)[uncertain]
  exact = empty_top_k(len(queries))
  for rows, chunk in chunks:
    index = np.broadcast_to(np.asarray(rows, np.int64), (len(queries), len(rows)))
    exact = merge_top_k(exact, score_chunk(queries, chunk, similarity), index, ranks, k)
  scores, index = best[0].copy(), best[1].copy()
  scores[uncertain], index[uncertain] = exact
  return scores, index


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
