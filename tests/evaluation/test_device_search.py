"""Search on the device writes the run files the host search wrote, byte for byte."""

import numpy as np
import pytest

from optical_jax.evaluation import dense_search, write_run
from optical_jax.evaluation.search import (DeviceTopK, as_run, docid_ranks, empty_top_k,
                                           merge_top_k, score_chunk)


def host_dense_search(query_vectors, doc_vectors, query_ids, doc_ids, *, k, chunk_size,
                      similarity):
  """The reference: the search as the host ran it before the device did (float64 scores of
  every chunk, merged by `merge_top_k`)."""
  ranks, best = docid_ranks(doc_ids), empty_top_k(len(query_ids))
  for start in range(0, len(doc_ids), chunk_size):
    chunk = np.asarray(doc_vectors[start:start + chunk_size])
    index = np.broadcast_to(np.arange(start, start + len(chunk)), (len(query_ids), len(chunk)))
    best = merge_top_k(best, score_chunk(query_vectors, chunk, similarity), index, ranks, k)
  return as_run(best, query_ids, doc_ids)


def corpus(kind: str, num_docs: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  queries = rng.normal(size=(7, 24)).astype(np.float32)
  if kind == "gaussian":
    docs = rng.normal(size=(num_docs, 24)).astype(np.float32)
  elif kind == "ties":  # few distinct vectors: most scores tie, also at the k-th best
    docs = rng.normal(size=(5, 24)).astype(np.float32)[rng.integers(0, 5, num_docs)]
  else:  # "close": scores within float32's rounding of each other around the cut-off
    docs = (1 + rng.normal(size=(num_docs, 1)) * 1e-7) * rng.normal(size=(1, 24))
    docs = docs.astype(np.float32)
  doc_ids = [f"d{i}" for i in rng.permutation(num_docs)]  # ids not in corpus order
  return queries, docs, [f"q{i}" for i in range(7)], doc_ids


@pytest.mark.parametrize("kind", ["gaussian", "ties", "close"])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("k, chunk_size", [(10, 64), (5, 1000), (50, 300)])
def test_device_search_run_files_equal_the_host_searchs(tmp_path, kind, similarity, k,
                                                        chunk_size):
  queries, docs, qids, dids = corpus(kind, 700)
  expected = host_dense_search(queries, docs, qids, dids, k=k, chunk_size=chunk_size,
                               similarity=similarity)
  got = dense_search(queries, docs, qids, dids, k=k, chunk_size=chunk_size,
                     similarity=similarity)
  assert (write_run(got, tmp_path / "device").read_bytes()
          == write_run(expected, tmp_path / "host").read_bytes())


def test_the_device_decides_distinct_scores_alone_and_hands_near_ties_to_the_host():
  """Gaussian vectors: every query proven exact on the device; identical documents (every
  score tied at the cut-off): every query searched again on the host."""
  for kind, uncertain in (("gaussian", False), ("ties", True)):
    queries, docs, _, dids = corpus(kind, 700)
    search = DeviceTopK(queries, 10)
    for start in range(0, 700, 128):
      search.add(np.arange(start, min(start + 128, 700)), docs[start:start + 128])
    best, flagged = search.result(docid_ranks(dids))
    assert flagged.tolist() == [uncertain] * len(queries)
    assert best[0].shape == best[1].shape == (len(queries), 10)
