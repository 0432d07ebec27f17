"""MaxSim at corpus scale: only the candidates' passages are encoded, a group at a time, and
the scores are those of holding every passage's tokens."""

import numpy as np
import pytest

from optical_jax.evaluation import TextEncoder, maxsim_reranker, rerank_run
from optical_jax.evaluation.maxsim import candidate_ids, maxsim_rerank
from optical_jax.evaluation.io import write_tsv
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.runtime.mesh import data_mesh
from tests.evaluation.test_retrieval import passages


@pytest.fixture(scope="module")
def setting(tiny_bert_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("maxsim")
  texts = passages(40, seed=3)
  corpus_file = tmp / "corpus.tsv"
  write_tsv(texts, corpus_file)
  encoder = TextEncoder(load_encoder(tiny_bert_dir), data_mesh(), max_length=32, batch_size=4,
                        corpus_cache_dir=tmp / "cache").bind()
  queries = {f"q{i}": " ".join(list(texts.values())[i].split()[:4]) for i in range(6)}
  query_tokens = dict(zip(queries, encoder.encode_tokens(list(queries.values()),
                                                         progress=False)))
  rng = np.random.default_rng(0)
  # Each query's candidates: a different random subset and order of the corpus.
  run = {q: {d: float(s) for d, s in zip(rng.permutation(list(texts))[:15], rng.normal(size=15))}
         for q in queries}
  return texts, corpus_file, encoder, query_tokens, run


@pytest.mark.slow
@pytest.mark.parametrize("group", [1, 7, 512])
def test_candidates_only_equals_every_passage_held(setting, group):
  texts, corpus_file, encoder, query_tokens, run = setting
  held = dict(zip(texts, encoder.encode_tokens(list(texts.values()), progress=False)))
  expected = rerank_run(run, maxsim_reranker(query_tokens, held), depth=10)
  encoder.encoded_rows = 0
  got = maxsim_rerank(run, query_tokens, encoder.corpus(corpus_file), encoder, depth=10,
                      group=group)
  assert got.keys() == expected.keys()
  for q in expected:
    assert got[q].keys() == expected[q].keys()  # the same top 10 of the run
    np.testing.assert_allclose([got[q][d] for d in expected[q]], list(expected[q].values()),
                               rtol=1e-5, atol=1e-6)
  # Only the union of the queries' top 10 was encoded, each passage once.
  union = {d for q in run for d in sorted(run[q], key=lambda d: -run[q][d])[:10]}
  assert encoder.encoded_rows == len(union) < len(texts)


def test_a_memo_encodes_each_passage_once_across_calls(setting):
  _, corpus_file, encoder, query_tokens, run = setting
  memo = {}
  first = maxsim_rerank(run, query_tokens, encoder.corpus(corpus_file), encoder, depth=5,
                        memo=memo)
  encoder.encoded_rows = 0
  again = maxsim_rerank(run, query_tokens, encoder.corpus(corpus_file), encoder, depth=5,
                        memo=memo)
  assert encoder.encoded_rows == 0 and again == first
  deeper = maxsim_rerank(run, query_tokens, encoder.corpus(corpus_file), encoder, depth=8,
                         memo=memo)
  union5 = {d for q in run for d in sorted(run[q], key=lambda d: -run[q][d])[:5]}
  union8 = {d for q in run for d in sorted(run[q], key=lambda d: -run[q][d])[:8]}
  assert encoder.encoded_rows == len(union8 - union5)
  assert all(deeper[q][d] == first[q][d] for q in first for d in first[q])


def test_candidate_ids_are_the_rows_ids_across_chunks():
  rng = np.random.default_rng(1)
  rows_ids = [rng.integers(1, 99, rng.integers(0, 9)).astype(np.int32) for _ in range(50)]

  class Chunked:  # the corpus in chunks of 7 rows, as CorpusTokens.chunks gives them
    def chunks(self, _):
      for start in range(0, 50, 7):
        part = rows_ids[start:start + 7]
        yield (start, np.concatenate(part),
               np.concatenate([[0], np.cumsum([len(p) for p in part])]))

  for rows in (np.array([0]), np.array([3, 6, 7, 8, 20, 49]), np.arange(50), np.array([13])):
    flat, offsets = candidate_ids(Chunked(), rows)
    assert flat.dtype == np.int32 and len(offsets) == len(rows) + 1
    for i, r in enumerate(rows):
      np.testing.assert_array_equal(flat[offsets[i]:offsets[i + 1]], rows_ids[r])
