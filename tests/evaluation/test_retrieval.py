import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from optical_jax.evaluation import (TextEncoder, dense_reranker, dense_search, maxsim_reranker,
                                    rerank_run, retrieve)
from optical_jax.evaluation.retrieval import deal_steps, padded_width, plan_batches, share_size
from optical_jax.evaluation.search import docid_ranks, empty_top_k, merge_top_k
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.runtime.mesh import data_mesh
from tests.helpers import ROOT

WORDS = ("light waters earth heaven firmament seed fruit tree herb night day evening morning "
         "beast cattle creeping fowl sea whale image likeness dominion").split()


def passages(n: int, seed: int = 0) -> dict[str, str]:
  """`n` passages of 1 to 40 words (several length buckets), ids not in corpus order."""
  rng = np.random.default_rng(seed)
  return {f"d{(7 * i) % n:04d}": " ".join(rng.choice(WORDS, rng.integers(1, 41)))
          for i in range(n)}


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


def test_tied_scores_keep_trec_evals_first_docids_in_any_chunking():
  docs = np.ones((10, 2), np.float32)  # every document scores the same
  dids = [f"d{i}" for i in (3, 9, 0, 5, 1, 8, 2, 7, 4, 6)]
  runs = [dense_search(np.ones((1, 2), np.float32), docs, ["q"], dids, k=3, chunk_size=c)
          for c in (1, 3, 10)]
  assert all(set(run["q"]) == {"d9", "d8", "d7"} for run in runs)  # docid descending


def test_merge_top_k_across_parts_equals_one_merge():
  rng = np.random.default_rng(2)
  scores = rng.integers(0, 5, (4, 30)).astype(np.float32)  # many ties
  ranks = docid_ranks([f"d{i:02d}" for i in range(30)])
  index = np.broadcast_to(np.arange(30), (4, 30))
  empty = (np.zeros((4, 0), np.float32), np.zeros((4, 0), np.int64))
  whole = merge_top_k(empty, scores, index, ranks, 7)
  parts = empty
  for cols in (np.arange(0, 30, 3), np.arange(1, 30, 3), np.arange(2, 30, 3)):
    parts = merge_top_k(parts, scores[:, cols], index[:, cols], ranks, 7)
  np.testing.assert_array_equal(parts[0], whole[0])
  np.testing.assert_array_equal(parts[1], whole[1])


@pytest.mark.parametrize("values", [5, 1000, None])
def test_merge_top_k_equals_sorting_every_candidate(values):
  """The partitioned merge against a sort of all candidates: ties (values 5: most scores
  tie at the k-th best), few ties, continuous scores; -inf and index -1 padding."""
  rng = np.random.default_rng(values or 0)
  num, k = 300, 10
  ranks = docid_ranks([f"d{i:04d}" for i in rng.permutation(num)])
  scores = (rng.random((6, num)) if values is None
            else rng.integers(0, values, (6, num))).astype(np.float32)
  index = np.broadcast_to(np.arange(num), (6, num)).copy()
  scores[0, :] = -np.inf  # a query whose every candidate is padding
  index[0, :] = -1
  best = merge_top_k(empty_top_k(6), scores, index, ranks, k)
  tie = np.where(index >= 0, ranks[np.maximum(index, 0)], num)
  order = np.lexsort((tie, -scores.astype(np.float64)), axis=1)[:, :k]
  np.testing.assert_array_equal(best[0], np.take_along_axis(scores, order, axis=1))
  np.testing.assert_array_equal(best[1], np.take_along_axis(index, order, axis=1))


def test_batches_hold_the_same_rows_and_width_for_any_process_and_device_count():
  lengths = np.random.default_rng(3).integers(1, 200, 1000)
  batches = plan_batches(lengths, 32)
  widths = [padded_width(int(lengths[b].max()), 128, 16) for b in batches]
  assert all(w % 16 == 0 or w == 128 for w in widths) and widths == sorted(widths)
  for parts, devices in ((1, 1), (2, 1), (1, 4), (3, 2)):
    runs = [b for part in range(parts) for step in deal_steps(widths, part, parts, devices)
            for b in step]
    assert sorted(runs) == list(range(len(batches)))  # each batch exactly once
    for part in range(parts):
      steps = deal_steps(widths, part, parts, devices)
      assert all(len(s) <= devices and len({widths[b] for b in s}) == 1 for s in steps)
      assert sum(len(batches[b]) for s in steps for b in s) == share_size(
          1000, 1000, 32, part, parts)


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


def test_maxsim_rerank_pads_to_few_shapes_and_scores_as_unpadded():
  from optical_jax.evaluation import search
  from optical_jax.scoring import maxsim_scores
  rng = np.random.default_rng(2)
  queries = {f"q{n}": rng.normal(size=(n, 8)).astype(np.float32) for n in range(1, 21)}
  docs = {f"d{i}": rng.normal(size=(3 + 5 * i, 8)).astype(np.float32) for i in range(12)}
  run = {q: {d: float(-i) for i, d in enumerate(docs)} for q in queries}
  before = search._maxsim_flat._cache_size()
  reranked = rerank_run(run, maxsim_reranker(queries, docs), depth=12)
  # 20 query lengths, one candidate count: two padded query widths.
  assert search._maxsim_flat._cache_size() - before <= 2
  q, ids = queries["q7"], list(docs)
  width = max(len(docs[d]) for d in ids)
  padded = np.stack([np.pad(docs[d], ((0, width - len(docs[d])), (0, 0))) for d in ids])
  mask = np.arange(width)[None] < np.array([len(docs[d]) for d in ids])[:, None]
  expected = np.asarray(maxsim_scores(q[None], np.ones((1, 7), bool), padded, mask))[0]
  np.testing.assert_allclose([reranked["q7"][d] for d in ids], expected, rtol=1e-5)


@pytest.mark.slow
def test_text_encoder_restores_order_and_matches_unbatched(minilm_dir):
  encoder = load_encoder(minilm_dir)
  texts = ["a much longer sentence about the light and the waters and the earth", "short",
           "medium length sentence here"]
  bound = TextEncoder(encoder, data_mesh(), batch_size=2).bind()
  vectors = bound.encode(texts, progress=False)
  for i, text in enumerate(texts):
    batch = encoder.tokenize([text])
    single = encoder.pool(encoder.apply(encoder.params, **batch), batch["attention_mask"])
    np.testing.assert_allclose(vectors[i], np.asarray(single)[0], atol=1e-5)
  tokens = bound.encode_tokens(texts, progress=False)
  assert [t.shape for t in tokens] == [(len(encoder.tokenize([t])["input_ids"][0]), 384)
                                       for t in texts]
  # MaxSim's query side: tokens and pooled vectors of one forward, the same as either alone.
  both_tokens, both_vectors = bound.encode_tokens(texts, progress=False, pooled=True)
  np.testing.assert_allclose(both_vectors, vectors, atol=1e-6)
  for alone, both in zip(tokens, both_tokens):
    np.testing.assert_allclose(both, alone, atol=1e-6)


def test_a_small_corpus_is_sized_by_the_width_its_token_function_returns(tiny_bert_dir,
                                                                         monkeypatch):
  from optical_jax.evaluation import collections
  encoder = load_encoder(tiny_bert_dir)
  hidden = encoder.config.hidden_size
  projection = np.ones((hidden, 4 * hidden), np.float32)  # a student head 4x the encoder's width
  project = lambda params, ids, mask: encoder.apply(params["encoder"], ids, mask) @ params["head"]
  plain = TextEncoder(encoder, data_mesh(), max_length=32).bind()
  wide = TextEncoder(encoder, data_mesh(), max_length=32, token_fn=project).bind(
      {"encoder": encoder.params, "head": projection})
  assert (plain.token_width, wide.token_width) == (hidden, 4 * hidden)
  # 10 passages fit at the encoder's width, not at the head's.
  monkeypatch.setattr(collections, "SMALL_CORPUS_BYTES", 10 * 32 * hidden * 4)
  assert collections.holds_tokens(10, plain) and not collections.holds_tokens(10, wide)


@pytest.mark.slow
def test_streamed_chunks_give_the_one_chunk_ranking(tiny_bert_dir):
  encoder = load_encoder(tiny_bert_dir)
  corpus, queries = passages(90), {f"q{i}": t for i, t in enumerate(passages(6, seed=1).values())}
  make = lambda **settings: TextEncoder(encoder, data_mesh(), batch_size=4, **settings).bind()
  runs = [retrieve(queries, corpus, query_encoder=make(), doc_encoder=make(corpus_chunk=chunk),
                   k=10, progress=False) for chunk in (1000, 25, 7)]
  # Other chunks make other batches (widths, neighbours): the last float bits may differ.
  for run in runs[1:]:
    assert run.keys() == runs[0].keys()
    for qid, ranked in run.items():
      assert ranked.keys() == runs[0][qid].keys()
      assert all(s == pytest.approx(runs[0][qid][d], abs=1e-5) for d, s in ranked.items())


@pytest.mark.slow
def test_a_cached_evaluation_does_not_encode_again(tiny_bert_dir, tmp_path):
  encoder = load_encoder(tiny_bert_dir)
  corpus, queries = passages(40), {"q0": "light and waters", "q1": "the beast of the sea"}
  make = lambda params=None: TextEncoder(encoder, data_mesh(), batch_size=4, corpus_chunk=16,
                                         cache_dir=tmp_path).bind(params)
  first_encoder = make()
  first = retrieve(queries, corpus, query_encoder=first_encoder, doc_encoder=first_encoder,
                   progress=False)
  assert first_encoder.encoded_rows == 42
  assert len(list(tmp_path.glob("*-0of1.npy"))) == 2  # queries and corpus, vectors ...
  assert len(list(tmp_path.glob("*.rows.npy"))) == 2  # ... and their row order
  assert not list(tmp_path.glob("*.tmp*.npy"))
  again = make()
  assert retrieve(queries, corpus, query_encoder=again, doc_encoder=again,
                  progress=False) == first
  assert again.encoded_rows == 0  # the encoder was never called
  # Other parameters (a later training step) are another key.
  changed = make(params=jax_tree_scaled(encoder.params, 1.5))
  retrieve(queries, corpus, query_encoder=changed, doc_encoder=changed, progress=False)
  assert changed.encoded_rows == 42


def jax_tree_scaled(params, factor):
  import jax
  return jax.tree_util.tree_map(lambda x: x * factor, params)


_RUN_SCRIPT = textwrap.dedent("""\
    import json, sys
    import jax
    from optical_jax.evaluation import TextEncoder, retrieve, write_run, write_tsv
    from optical_jax.models.hf_checkpoint import load_encoder
    from optical_jax.runtime.mesh import data_mesh
    encoder = load_encoder(sys.argv[1])
    queries, corpus = json.loads(open(sys.argv[2]).read())
    make = lambda **settings: TextEncoder(encoder, data_mesh(), batch_size=3, **settings).bind()
    run = retrieve(queries, corpus, query_encoder=make(), doc_encoder=make(corpus_chunk=50),
                   k=20, progress=False)
    write_run(run, sys.argv[3])
    # The corpus as a file: tokenised in the background into the token cache, then from it.
    write_tsv(corpus, sys.argv[3] + ".tsv")
    for i in range(2):
      doc_encoder = make(corpus_chunk=50, corpus_cache_dir=sys.argv[3] + ".cache")
      source = doc_encoder.corpus(sys.argv[3] + ".tsv")
      run = retrieve(queries, source, query_encoder=make(), doc_encoder=doc_encoder, k=20,
                     progress=False)
      write_run(run, sys.argv[3] + f".tokens{i}")
      print("tokenized", source.tokenized)
    print(jax.local_device_count(), "devices")
    # An encoder given a mesh of the last device alone runs there, as the whole mesh's does.
    import numpy as np
    from jax.sharding import Mesh
    last = jax.devices()[-1]
    alone = TextEncoder(encoder, Mesh(np.asarray([last]), ("data",)), batch_size=3).bind()
    texts = list(corpus.values())[:12]
    placed = {d for leaf in jax.tree_util.tree_leaves(alone.device_params)
              for d in leaf.devices()}
    same = np.array_equal(alone.encode(texts, progress=False), make().encode(texts, progress=False))
    print("on the last device alone:", placed == {last} and same)
    """)


@pytest.mark.slow
def test_two_devices_write_the_one_device_run_file(tiny_bert_dir, tmp_path):
  data = tmp_path / "data.json"
  data.write_text(json.dumps([{f"q{i}": t for i, t in enumerate(passages(5, 1).values())},
                              passages(120)]))
  (tmp_path / "run.py").write_text(_RUN_SCRIPT)
  files = {}
  for devices in (1, 2):
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tiny_bert_dir),
                          str(data), str(tmp_path / f"run{devices}")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{devices} devices" in out.stdout
    assert "on the last device alone: True" in out.stdout
    assert "tokenized 120\ntokenized 0\n" in out.stdout  # the second from the token cache
    files[devices] = (tmp_path / f"run{devices}").read_bytes()
    for i in range(2):
      assert (tmp_path / f"run{devices}.tokens{i}").read_bytes() == files[devices]
  assert files[1] == files[2] and files[1].count(b"\n") == 5 * 20


@pytest.mark.slow
def test_bfloat16_encoding_is_close_to_float32(tiny_bert_dir):
  encoder = load_encoder(tiny_bert_dir)
  texts = list(passages(8).values())
  make = lambda **settings: TextEncoder(encoder, data_mesh(), batch_size=4, **settings).bind()
  full = make().encode(texts, progress=False)
  half = make(dtype="bfloat16").encode(texts, progress=False)
  assert half.dtype == np.float32 and not np.array_equal(half, full)
  np.testing.assert_allclose(half, full, atol=0.1, rtol=0.05)
