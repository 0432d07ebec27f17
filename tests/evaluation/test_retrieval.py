import numpy as np
import pytest

from optical_jax.evaluation import (TextEncoder, dense_reranker, dense_search, maxsim_reranker,
                                    rerank_run)
from optical_jax.models.hf_checkpoint import load_encoder


def test_chunked_dense_search_equals_brute_force():
  rng = np.random.default_rng(0)
  queries, docs = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(37, 8)).astype(
      np.float32)
  qids, dids = [f"q{i}" for i in range(5)], [f"d{i}" for i in range(37)]
  run = dense_search(queries, docs, qids, dids, k=6, chunk_size=4)
  scores = queries @ docs.T
  for row, qid in enumerate(qids):
    expected = {dids[j] for j in np.argsort(-scores[row])[:6]}
    assert set(run[qid]) == expected
    for d, s in run[qid].items():
      assert s == pytest.approx(scores[row, dids.index(d)], rel=1e-5)


def test_rerank_rescores_only_the_candidates():
  rng = np.random.default_rng(1)
  vecs = {f"d{i}": rng.normal(size=4) for i in range(10)}
  query = {"q": rng.normal(size=4)}
  candidates = {"q": {f"d{i}": float(10 - i) for i in range(10)}}
  reranked = rerank_run(candidates, dense_reranker(query, vecs), depth=3)
  assert set(reranked["q"]) == {"d0", "d1", "d2"}
  assert reranked["q"]["d1"] == pytest.approx(float(query["q"] @ vecs["d1"]), rel=1e-5)
  tokens = {k: v[None] for k, v in vecs.items()}
  maxsim = rerank_run(candidates, maxsim_reranker({"q": query["q"][None]}, tokens), depth=2)
  cos = query["q"] @ vecs["d0"] / np.linalg.norm(query["q"]) / np.linalg.norm(vecs["d0"])
  assert maxsim["q"]["d0"] == pytest.approx(cos, rel=1e-5)


def test_text_encoder_restores_order_and_matches_unbatched(minilm_dir):
  encoder = load_encoder(minilm_dir)
  texts = ["a much longer sentence about the light and the waters and the earth", "short",
           "medium length sentence here"]
  vectors = TextEncoder(encoder, batch_size=2).encode(texts, progress=False)
  for i, text in enumerate(texts):
    batch = encoder.tokenize([text])
    single = encoder.pool(encoder.apply(encoder.params, **batch), batch["attention_mask"])
    np.testing.assert_allclose(vectors[i], np.asarray(single)[0], atol=1e-5)


def test_frozen_encoder_cache_returns_the_same_vectors_without_encoding(minilm_dir, tmp_path):
  encoder = load_encoder(minilm_dir)
  texts = ["one passage", "another passage entirely"]
  first = TextEncoder(encoder, cache_dir=tmp_path).encode(texts, progress=False)
  assert len(list(tmp_path.glob("*.npy"))) == 1
  cached = TextEncoder(encoder, cache_dir=tmp_path)
  cached._encode = None  # encoding again would fail: the cache must answer
  np.testing.assert_array_equal(cached.encode(texts, progress=False), first)
  assert TextEncoder(encoder, cache_dir=tmp_path).encode(texts[:1], progress=False).shape == (1, 384)


def test_the_same_texts_and_params_are_encoded_once(minilm_dir, monkeypatch):
  encoder = TextEncoder(load_encoder(minilm_dir), max_length=16, batch_size=4)
  calls = []
  original = encoder._encode
  monkeypatch.setattr(encoder, "_encode", lambda *a: calls.append(1) or original(*a))
  texts = ["Jesus wept.", "In the beginning.", "And God said."]
  first = encoder.encode(texts, progress=False)
  np.testing.assert_array_equal(encoder.encode(texts, progress=False), first)
  assert len(calls) == 1  # a second collection over the same corpus
  encoder.encode(texts[:2], progress=False)
  assert len(calls) == 2  # other texts
  encoder.params = dict(encoder.params)  # new parameters (a later training step)
  encoder.encode(texts[:2], progress=False)
  assert len(calls) == 3
