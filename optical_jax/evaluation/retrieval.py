"""Dense retrieval for evaluation: batched encoding, chunked top-k search and reranking."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from optical_jax.shapes import bucket_for, pad_sequences
from optical_jax.scoring import dense_scores, maxsim_scores
from optical_jax.pooling import pool

TokenFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class TextEncoder:
  """What encodes one side of a collection: a loaded encoder and the parameters to use.

  `token_fn(params, input_ids, attention_mask) -> [batch, length, dim]` defaults to the
  encoder's own apply; a trained student with a projection head passes its own.
  """

  encoder: Any  # optical_jax.hf_checkpoint.LoadedEncoder
  params: Any = None
  token_fn: TokenFn | None = None
  max_length: int = 128
  batch_size: int = 64
  # Frozen encoders only (a teacher): pooled embeddings are stored here, keyed by the
  # checkpoint, settings and texts, so the same corpus is encoded once across runs.
  cache_dir: str | Path | None = None

  def __post_init__(self):
    if self.params is None:
      self.params = self.encoder.params
    token_fn = self.token_fn or self.encoder.apply
    self._tokens = jax.jit(token_fn)
    self._pooled = jax.jit(lambda params, ids, mask: pool(
        token_fn(params, ids, mask), mask, method=self.encoder.pooling,
        normalize=self.encoder.normalize))

  def _batches(self, texts: Sequence[str], desc: str, progress: bool):
    """(indices, input_ids, mask) per batch, length-sorted and bucketed, in a fixed shape."""
    ids = self.encoder.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                                 padding=False)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    starts = range(0, len(order), self.batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
      index = order[start:start + self.batch_size]
      width = bucket_for(max(len(ids[i]) for i in index), self.max_length)
      input_ids, mask = pad_sequences([ids[i] for i in index], width,
                                      self.encoder.config.pad_token_id, rows=self.batch_size)
      yield index, input_ids, mask

  def encode(self, texts: Sequence[str], *, desc: str = "encoding",
             progress: bool = True) -> np.ndarray:
    """Pooled embeddings `[len(texts), dim]` (float32), in the order of `texts`.

    The last result is kept while `params` stays the same object, so collections sharing a
    corpus (CIRAL's dev, test-a and test-b) encode it once per evaluation."""
    key = hashlib.sha256(json.dumps(
        [str(self.encoder.path), self.max_length, self.encoder.pooling, self.encoder.normalize,
         list(texts)]).encode()).hexdigest()[:24]
    last = getattr(self, "_last", None)
    if last is not None and last[0] is self.params and last[1] == key:
      return last[2]
    if self.cache_dir is None:
      vectors = self._encode(texts, desc, progress)
      self._last = (self.params, key, vectors)
      return vectors
    path = Path(self.cache_dir).expanduser() / f"{key}.npy"
    if path.is_file():
      return np.load(path)
    vectors = self._encode(texts, desc, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors

  def _encode(self, texts: Sequence[str], desc: str, progress: bool) -> np.ndarray:
    out = None
    for index, input_ids, mask in self._batches(texts, desc, progress):
      vectors = np.asarray(self._pooled(self.params, input_ids, mask))[:len(index)]
      if out is None:
        out = np.zeros((len(texts), vectors.shape[1]), np.float32)
      out[index] = vectors
    return out if out is not None else np.zeros((0, 0), np.float32)

  def encode_tokens(self, texts: Sequence[str], *, desc: str = "encoding tokens",
                    progress: bool = True) -> list[np.ndarray]:
    """Token embeddings of each text, unpadded: a list of `[length_i, dim]` arrays."""
    out: list[np.ndarray | None] = [None] * len(texts)
    for index, input_ids, mask in self._batches(texts, desc, progress):
      hidden = np.asarray(self._tokens(self.params, input_ids, mask), np.float32)
      for row, i in enumerate(index):
        out[i] = hidden[row, :int(mask[row].sum())]
    return out


def dense_search(query_vectors: np.ndarray, doc_vectors: np.ndarray, query_ids: Sequence[str],
                 doc_ids: Sequence[str], *, k: int = 100, chunk_size: int = 8192,
                 similarity: str = "dot") -> dict[str, dict[str, float]]:
  """Top-`k` documents per query as a run; scores documents `chunk_size` at a time so memory
  stays `O(queries * (k + chunk_size))` whatever the corpus size."""
  if len(query_ids) != len(query_vectors) or len(doc_ids) != len(doc_vectors):
    raise ValueError("ids and vectors must have the same length")
  num_queries, k = len(query_ids), min(k, len(doc_ids))
  best_scores = np.full((num_queries, 0), -np.inf, np.float32)
  best_index = np.zeros((num_queries, 0), np.int64)
  score = jax.jit(lambda q, d: dense_scores(q, d, similarity=similarity))
  for start in range(0, len(doc_ids), chunk_size):
    chunk = np.asarray(score(query_vectors, doc_vectors[start:start + chunk_size]))
    scores = np.concatenate([best_scores, chunk], axis=1)
    index = np.concatenate(
        [best_index, np.broadcast_to(np.arange(start, start + chunk.shape[1]), chunk.shape)],
        axis=1)
    keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else (
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape))
    best_scores = np.take_along_axis(scores, keep, axis=1)
    best_index = np.take_along_axis(index, keep, axis=1)
  return {qid: {doc_ids[j]: float(s) for j, s in zip(best_index[row], best_scores[row])}
          for row, qid in enumerate(query_ids)}


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
    return np.asarray(dense_scores(query_vectors[qid][None], docs, similarity=similarity))[0]
  return score


def maxsim_reranker(query_tokens: Mapping[str, np.ndarray], doc_tokens: Mapping[str, np.ndarray]
                    ) -> Callable[[str, list[str]], np.ndarray]:
  """A `score_fn` for `rerank_run` with ColBERT late interaction over token embeddings."""
  def score(qid, docids):
    q = query_tokens[qid]
    width = max(doc_tokens[d].shape[0] for d in docids)
    docs = np.zeros((len(docids), width, q.shape[1]), np.float32)
    mask = np.zeros((len(docids), width), bool)
    for row, d in enumerate(docids):
      docs[row, :len(doc_tokens[d])] = doc_tokens[d]
      mask[row, :len(doc_tokens[d])] = True
    return np.asarray(maxsim_scores(q[None], np.ones((1, len(q)), bool), docs, mask))[0]
  return score


def retrieve(queries: Mapping[str, str], corpus: Mapping[str, str], *, query_encoder: TextEncoder,
             doc_encoder: TextEncoder, k: int = 100, progress: bool = True,
             similarity: str = "dot") -> dict[str, dict[str, float]]:
  """Encodes queries and documents (each side with its own encoder) and searches densely."""
  query_ids, doc_ids = list(queries), list(corpus)
  doc_vectors = doc_encoder.encode([corpus[d] for d in doc_ids], desc="documents",
                                   progress=progress)
  query_vectors = query_encoder.encode([queries[q] for q in query_ids], desc="queries",
                                       progress=progress)
  return dense_search(query_vectors, doc_vectors, query_ids, doc_ids, k=k, similarity=similarity)
