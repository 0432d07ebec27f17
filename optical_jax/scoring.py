"""Retrieval scores of encoded queries and documents: dense (pooled) and MaxSim (ColBERT).

Pure functions, arrays in, `jax.Array` `[num_queries, num_documents]` out; they import
neither transformers, orbax nor the training stack. `optical_jax.evaluation` ranks with
them, and `optical_jax.losses` re-exports them for code written before they moved here.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from optical_jax.pooling import l2_normalize

__all__ = ["dense_scores", "maxsim_scores"]


def _as_array(name: str, x, rank: int) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank}, got shape {x.shape}")
  return x


def dense_scores(queries: jax.Array, documents: jax.Array, *,
                 similarity: Literal["dot", "cosine"] = "dot") -> jax.Array:
  """Query-document scores `[num_queries, num_documents]` of pooled embeddings.

  Args:
    queries: `[Q, d]`.
    documents: `[D, d]`; score a large corpus chunk by chunk to bound memory.
    similarity: `"dot"` or `"cosine"`.

  >>> dense_scores(jnp.array([[1., 0.]]), jnp.array([[2., 0.], [0., 1.]]), similarity="cosine")
  Array([[1., 0.]], dtype=float32)
  """
  queries = _as_array("queries", queries, 2).astype(jnp.float32)
  documents = _as_array("documents", documents, 2).astype(jnp.float32)
  if queries.shape[1] != documents.shape[1]:
    raise ValueError(f"queries dim {queries.shape[1]} != documents dim {documents.shape[1]}")
  if similarity == "cosine":
    queries, documents = l2_normalize(queries), l2_normalize(documents)
  elif similarity != "dot":
    raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
  return queries @ documents.T


def maxsim_scores(query_tokens: jax.Array, query_mask: jax.Array, doc_tokens: jax.Array,
                  doc_mask: jax.Array, *, normalize: bool = True,
                  doc_chunk_size: int | None = None) -> jax.Array:
  r"""ColBERT late-interaction scores `[Q, D]`: :math:`\sum_i \max_j \langle q_i, d_j \rangle`.

  Sums, over the query's real tokens, the best similarity with any real document token.

  Args:
    query_tokens: `[Q, Lq, d]`.
    query_mask: `[Q, Lq]`.
    doc_tokens: `[D, Ld, d]`.
    doc_mask: `[D, Ld]`.
    normalize: L2-normalise tokens first (cosine similarities, as ColBERT does).
    doc_chunk_size: score this many documents at a time (bounds the `[Q, chunk, Lq, Ld]`
      intermediate); all at once if None.

  >>> q = jnp.array([[[1., 0.], [0., 1.]]]); d = jnp.array([[[1., 0.]], [[0., 2.]]])
  >>> maxsim_scores(q, jnp.ones((1, 2)), d, jnp.ones((2, 1)))
  Array([[1., 1.]], dtype=float32)
  """
  query_tokens = _as_array("query_tokens", query_tokens, 3).astype(jnp.float32)
  doc_tokens = _as_array("doc_tokens", doc_tokens, 3).astype(jnp.float32)
  query_mask = _as_array("query_mask", query_mask, 2).astype(bool)
  doc_mask = _as_array("doc_mask", doc_mask, 2).astype(bool)
  if query_mask.shape != query_tokens.shape[:2]:
    raise ValueError(f"query_mask must have shape {query_tokens.shape[:2]}, got "
                     f"{query_mask.shape}")
  if doc_mask.shape != doc_tokens.shape[:2]:
    raise ValueError(f"doc_mask must have shape {doc_tokens.shape[:2]}, got {doc_mask.shape}")
  if query_tokens.shape[2] != doc_tokens.shape[2]:
    raise ValueError(f"query_tokens dim {query_tokens.shape[2]} != doc_tokens dim "
                     f"{doc_tokens.shape[2]}")
  if normalize:
    query_tokens, doc_tokens = l2_normalize(query_tokens), l2_normalize(doc_tokens)

  def score_chunk(chunk):
    tokens, mask = chunk
    sims = jnp.einsum("qid,njd->qnij", query_tokens, tokens)
    sims = jnp.where(mask[None, :, None, :], sims, -jnp.inf)
    best = jnp.max(sims, axis=-1)
    best = jnp.where(jnp.isfinite(best), best, 0.0)  # documents with no real token
    return jnp.sum(jnp.where(query_mask[:, None, :], best, 0.0), axis=-1)  # [Q, n]

  num_docs = doc_tokens.shape[0]
  if doc_chunk_size is None or doc_chunk_size >= num_docs:
    return score_chunk((doc_tokens, doc_mask))
  pad = -num_docs % doc_chunk_size
  tokens = jnp.pad(doc_tokens, ((0, pad), (0, 0), (0, 0)))
  mask = jnp.pad(doc_mask, ((0, pad), (0, 0)))
  chunks = (tokens.reshape(-1, doc_chunk_size, *tokens.shape[1:]),
            mask.reshape(-1, doc_chunk_size, mask.shape[1]))
  scores = jax.lax.map(score_chunk, chunks)  # [chunks, Q, chunk]
  return jnp.moveaxis(scores, 0, 1).reshape(query_tokens.shape[0], -1)[:, :num_docs]
