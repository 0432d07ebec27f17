"""The evaluation's caches: a corpus file tokenised once (its ids on disk, reused by every later
evaluation, tokenised a chunk ahead of encoding), embeddings keyed by every setting that
changes a vector, broken entries set aside and computed again, a full disk as one line, and
temporaries of dead processes swept."""

import errno
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from optical_jax.evaluation import TextEncoder, read_corpus, retrieve, write_run
from optical_jax.evaluation.corpus_files import forget_scans
from optical_jax.evaluation.embedding_cache import EmbeddingCache
from optical_jax.files.cache_files import CacheWriteError
from optical_jax.files.fileio import host_tag
from optical_jax.files.token_arrays import flatten, id_dtype, tokenize_flat
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.runtime.mesh import data_mesh
from tests.evaluation.test_retrieval import WORDS


class CountingTokenizer:
  """A tokenizer that counts the texts it is asked for, and in which threads."""

  def __init__(self, inner):
    self.inner, self.texts, self.threads, self.events = inner, 0, set(), []

  @property
  def __class__(self):  # the fingerprint sees the real tokenizer's class
    return type(self.inner)

  is_fast = False  # token_arrays.ids_tokenizer then calls it, not its Rust backend: counted

  def __call__(self, texts, **kwargs):
    self.texts += len(texts)
    self.threads.add(threading.current_thread().name)
    self.events.append(("tokenize", len(texts)))
    return self.inner(texts, **kwargs)

  def __len__(self):
    return len(self.inner)

  def __getattr__(self, name):
    return getattr(self.inner, name)


@pytest.fixture
def encoder(tiny_bert_dir):
  encoder = load_encoder(tiny_bert_dir)
  encoder._tokenizer = CountingTokenizer(encoder.tokenizer)
  forget_scans()  # each test reads its files as a new process would
  return encoder


def write_corpus(path, n: int, seed: int = 0) -> dict[str, str]:
  """A CIRAL-style JSONL corpus of `n` passages (1 to 40 words, some with a title); returns
  what `read_corpus` makes of it."""
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      record = {"docid": f"SRC#{(7 * i) % n}#{i % 3}",
                "text": " ".join(rng.choice(WORDS, rng.integers(1, 41)))}
      if i % 4 == 0:
        record["title"] = " ".join(rng.choice(WORDS, 2))
      f.write(json.dumps(record) + "\n")
  return read_corpus(path)


QUERIES = {"q0": "light and waters", "q1": "the beast of the sea", "q2": "seed fruit tree"}


def make(encoder, tmp_path, **settings):
  """An encoder with `encoder`'s own parameters."""
  return TextEncoder(encoder, data_mesh(), **{"batch_size": 4, "corpus_chunk": 16,
                                              "corpus_cache_dir": tmp_path / "corpus",
                                              **settings}).bind()


def run_bytes(run, path) -> bytes:
  return write_run(run, path).read_bytes()


@pytest.mark.slow
def test_a_second_evaluation_tokenises_no_passage_and_writes_the_same_run(encoder, tmp_path):
  corpus_path = tmp_path / "passages.jsonl"
  texts = write_corpus(corpus_path, 90)
  # Today's path: the corpus read into memory as text, tokenised as it is encoded.
  reference = run_bytes(retrieve(QUERIES, texts, query_encoder=make(encoder, tmp_path),
                                 doc_encoder=make(encoder, tmp_path), progress=False),
                        tmp_path / "reference.trec")
  encoder.tokenizer.texts = 0
  first = make(encoder, tmp_path)
  corpus = first.corpus(corpus_path)
  assert corpus.docids == list(texts)
  run = retrieve(QUERIES, corpus, query_encoder=first, doc_encoder=first, progress=False)
  assert run_bytes(run, tmp_path / "first.trec") == reference
  assert encoder.tokenizer.texts == 90 + 3 and corpus.tokenized == 90
  # The ids are on disk: uint16 (the vocabulary fits), offsets, a record of what they are.
  (entry,) = (tmp_path / "corpus" / "tokens").iterdir()
  offsets = np.load(entry / "offsets.npy")
  meta = json.loads((entry / "meta.json").read_text())
  assert meta["dtype"] == "uint16" and meta["passages"] == 90 and offsets.shape == (91,)
  assert (entry / "ids.bin").stat().st_size == 2 * offsets[-1] == 2 * meta["tokens"]
  ids = np.fromfile(entry / "ids.bin", np.uint16)
  expected = encoder.tokenizer.inner(list(texts.values()), truncation=True, max_length=128)
  assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == \
      expected["input_ids"]
  # A new encoder (a later evaluation, eval.py): only the queries are tokenised.
  encoder.tokenizer.texts = 0
  forget_scans()
  second = make(encoder, tmp_path)
  corpus = second.corpus(corpus_path)
  assert corpus.cached() and corpus.scan.cached
  again = retrieve(QUERIES, corpus, query_encoder=second, doc_encoder=second, progress=False)
  assert run_bytes(again, tmp_path / "second.trec") == reference
  assert encoder.tokenizer.texts == 3 and corpus.tokenized == 0
  assert second.encoded_rows == 93  # the encoder did run: only the tokenizer was skipped


def test_tokenising_in_batches_gives_the_ids_of_one_call(encoder):
  texts = [" ".join(WORDS[:n]) for n in range(1, 12)]
  tokenize = lambda batch: encoder.tokenizer(list(batch), truncation=True, max_length=8)[
      "input_ids"]
  whole = flatten(tokenize(texts), np.uint16)
  for batch in (1, 3, 11, 100):
    flat, offsets = tokenize_flat(tokenize, texts, np.uint16, batch=batch)
    assert flat.dtype == np.uint16 and np.array_equal(flat, whole[0])
    assert np.array_equal(offsets, whole[1]) and offsets[0] == 0
  assert encoder.tokenizer.texts == 11 * 5


def test_the_token_cache_follows_content_tokenizer_length_and_prompt(encoder, tmp_path):
  corpus_path = tmp_path / "passages.jsonl"
  write_corpus(corpus_path, 40)

  def tokenized(path, *, prompt="", **settings) -> int:
    corpus = make(encoder, tmp_path, **settings).corpus(path, prompt=prompt)
    list(corpus.chunks(16))
    return corpus.tokenized

  assert tokenized(corpus_path) == 40
  assert tokenized(corpus_path) == 0
  copy = tmp_path / "elsewhere" / "copy.jsonl"  # the same content at another path: the same
  copy.parent.mkdir()
  copy.write_bytes(corpus_path.read_bytes())
  assert tokenized(copy) == 0
  assert tokenized(corpus_path, max_length=32) == 40  # another length
  assert tokenized(corpus_path, prompt="passage: ") == 40  # another prompt
  with open(corpus_path, "a") as f:  # an edit in place: another content
    f.write(json.dumps({"docid": "new", "text": "a new passage"}) + "\n")
  assert tokenized(corpus_path) == 41
  other = load_encoder(encoder.path)  # another vocabulary: another tokenizer fingerprint
  other.tokenizer.add_tokens(["firmament"])
  corpus = TextEncoder(other, data_mesh(), batch_size=4,
                       corpus_cache_dir=tmp_path / "corpus").corpus(copy)
  assert not corpus.cached()
  # One entry per content, length and prompt: the copy shares the original's.
  assert len(list((tmp_path / "corpus" / "tokens").iterdir())) == 4
  assert id_dtype(30522) == np.uint16 and id_dtype(250002) == np.int32


def test_tokenisation_runs_a_chunk_ahead_of_encoding(encoder, tmp_path, monkeypatch):
  corpus_path = tmp_path / "passages.jsonl"
  write_corpus(corpus_path, 64)
  events = []
  text_encoder = make(encoder, tmp_path)
  run = text_encoder._run

  def slow_run(fn, flat, offsets, *args):
    chunk = sum(what == "encode" for what, _ in events)
    events.append(("encode", len(offsets) - 1))
    # The encoder is busy until the next chunk is tokenised meanwhile (or 30 s have passed:
    # then the order below fails).
    deadline = time.monotonic() + 30
    while (chunk < 3 and sum(what == "tokenize" for what, _ in events) < chunk + 2
           and time.monotonic() < deadline):
      time.sleep(0.01)
    yield from run(fn, flat, offsets, *args)
    events.append(("encoded", len(offsets) - 1))

  monkeypatch.setattr(text_encoder, "_run", slow_run)
  encoder.tokenizer.events = events
  list(text_encoder.stream(text_encoder.corpus(corpus_path), progress=False))
  assert [e for e in events if e[0] == "tokenize"] == [("tokenize", 16)] * 4
  assert encoder.tokenizer.threads == {"optical_jax-tokenize"}
  tokenized = [i for i, (what, _) in enumerate(events) if what == "tokenize"]
  encoded = [i for i, (what, _) in enumerate(events) if what == "encoded"]
  # Chunk i + 1 was tokenised before chunk i was encoded (while the encoder was busy).
  assert all(tokenized[i + 1] < encoded[i] for i in range(3)), events


def test_a_consumer_that_stops_early_leaves_no_temporary_and_no_running_thread(encoder,
                                                                              tmp_path):
  corpus_path = tmp_path / "passages.jsonl"
  write_corpus(corpus_path, 64)
  corpus = make(encoder, tmp_path).corpus(corpus_path)
  chunks = corpus.chunks(16)
  next(chunks)
  chunks.close()
  assert not any(t.name == "optical_jax-tokenize" for t in threading.enumerate())
  assert list((tmp_path / "corpus" / "tokens").iterdir()) == []
  assert not corpus.cached()


def test_a_truncated_token_cache_is_built_again_with_a_warning(encoder, tmp_path, caplog):
  corpus_path = tmp_path / "passages.jsonl"
  write_corpus(corpus_path, 40)
  corpus = make(encoder, tmp_path).corpus(corpus_path)
  first = [(s, f.copy(), o.copy()) for s, f, o in corpus.chunks(16)]
  (entry,) = (tmp_path / "corpus" / "tokens").iterdir()
  os.truncate(entry / "ids.bin", 100)
  again = make(encoder, tmp_path).corpus(corpus_path)
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    assert not again.cached()
  assert f"{entry / 'ids.bin'}: broken corpus token cache entry" in caplog.text
  rebuilt = list(again.chunks(16))
  assert again.tokenized == 40 and again.cached()
  for (s, f, o), (s2, f2, o2) in zip(first, rebuilt):
    assert s == s2 and np.array_equal(f, f2) and np.array_equal(o, o2)


@pytest.mark.slow
def test_a_truncated_embedding_cache_is_encoded_again_with_a_warning(encoder, tmp_path,
                                                                      caplog):
  corpus = write_corpus(tmp_path / "passages.jsonl", 40)
  cached = lambda: make(encoder, tmp_path, cache_dir=tmp_path / "embeddings")
  first_encoder = cached()
  first = retrieve(QUERIES, corpus, query_encoder=first_encoder, doc_encoder=first_encoder,
                   progress=False)
  vectors = sorted((tmp_path / "embeddings").glob("*-0of1.npy"), key=lambda p: p.stat().st_size)
  big, rows = vectors[-1], vectors[-1].with_name(vectors[-1].name[:-4] + ".rows.npy")
  for broken, size in ((big, 3000), (rows, 100)):  # `truncate -s 3000`; a short row order
    whole = broken.read_bytes()
    os.truncate(broken, size)
    again = cached()
    with caplog.at_level(logging.WARNING, logger="optical_jax"):
      caplog.clear()
      assert retrieve(QUERIES, corpus, query_encoder=again, doc_encoder=again,
                      progress=False) == first
    assert f"{big}: broken embedding cache entry ({broken.name}: " in caplog.text
    assert again.encoded_rows == 40  # the corpus again, the queries from their cache
    assert broken.read_bytes() == whole  # written whole again
    reused = cached()
    retrieve(QUERIES, corpus, query_encoder=reused, doc_encoder=reused, progress=False)
    assert reused.encoded_rows == 0


@pytest.mark.slow
def test_the_embedding_cache_key_holds_the_models_dtype_and_attention(tiny_bert_dir, tmp_path):
  full = load_encoder(tiny_bert_dir)
  half = load_encoder(tiny_bert_dir, dtype=jnp.bfloat16)
  texts = ["light and waters", "the beast of the sea"]
  key = lambda encoder, **settings: TextEncoder(encoder, data_mesh(), cache_dir=tmp_path,
                                                **settings).bind().cache_for(texts, 0, 1).name
  cudnn = type(full)(**{**vars(full), "module": full.module.clone(attention="cudnn")})
  keys = [key(full), key(half), key(cudnn), key(full, dtype="bfloat16")]
  assert len(set(keys)) == 4 and key(full) == keys[0]
  # A bfloat16 model after a float32 one: encoded anew, and its own vectors come back.
  f32 = TextEncoder(full, data_mesh(), cache_dir=tmp_path).bind()
  f32_vectors = f32.encode(texts, progress=False)
  b16 = TextEncoder(half, data_mesh(), cache_dir=tmp_path).bind()
  b16_vectors = b16.encode(texts, progress=False)
  assert b16.encoded_rows == 2 and not np.array_equal(f32_vectors, b16_vectors)


def test_a_full_disk_while_caching_is_one_line_naming_the_file(encoder, tmp_path, monkeypatch):
  corpus_path = tmp_path / "passages.jsonl"
  corpus = write_corpus(corpus_path, 40)

  def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "posix_fallocate", full)
  text_encoder = make(encoder, tmp_path, cache_dir=tmp_path / "embeddings")
  with pytest.raises(CacheWriteError) as caught:
    retrieve(QUERIES, corpus, query_encoder=text_encoder, doc_encoder=text_encoder,
             progress=False)
  message = str(caught.value)
  assert "\n" not in message and "No space left on device" in message
  assert message.startswith(f"{tmp_path / 'embeddings'}/") and ".npy: cannot write the " \
      "embedding cache" in message and "eval.embedding_cache=False" in message
  assert not any((tmp_path / "embeddings").iterdir())  # the partial file is gone


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limits")
@pytest.mark.parametrize("cache, entry", [("embeddings", ".npy: cannot write the embedding cache"),
                                          ("corpus", "ids.bin: cannot write the corpus token cache")])
def test_a_file_size_limit_while_caching_is_one_line_naming_the_file(encoder, tmp_path, cache,
                                                                     entry):
  corpus_path = tmp_path / "passages.jsonl"
  write_corpus(corpus_path, 400)  # ~18 KB of token ids, ~50 KB of vectors
  text_encoder = make(encoder, tmp_path, corpus_chunk=64, corpus_cache_dir=tmp_path / "corpus",
                      cache_dir=tmp_path / "embeddings" if cache == "embeddings" else None)
  corpus = text_encoder.corpus(corpus_path)  # the scan (a few KB) is written before the limit
  if cache == "embeddings":
    list(corpus.chunks(64))  # token ids cached before the limit: only the vectors are written
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))  # as `ulimit -f` or a quota does
  try:
    with pytest.raises(CacheWriteError) as caught:
      list(text_encoder.stream(corpus, progress=False))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  message = str(caught.value)
  assert "\n" not in message and "File too large" in message and entry in message
  assert message.startswith(str(tmp_path / cache))
  assert not [p for p in (tmp_path / cache).rglob("*") if ".optical-tmp-" in p.name]
  assert not any(t.name == "optical_jax-tokenize" for t in threading.enumerate())


def _ours(pid: int, name: str, host: str | None = None) -> str:
  """The name `fileio.temporary` gives process `pid`'s temporary of `name`."""
  return f".optical-tmp-{pid}-{host or host_tag()}-0123abcd-{name}"


def test_temporaries_of_dead_processes_are_swept_when_a_cache_opens(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  alive = os.getppid()
  names = {
      _ours(dead.pid, "a.npy"): False,  # this host's, its process gone
      _ours(alive, "c.npy"): True,  # its process is running
      _ours(dead.pid, "d.npy", host="00000000"): True,  # another host's: not ours to judge
      "e.npy": True,  # not a temporary
      # A user's files named like the project's older temporaries are never touched.
      f"data.tmp{dead.pid}.csv": True,
      f"b.rows.tmp{dead.pid}.npy": True,
      f"a.tmp{dead.pid}-{host_tag()}.npy": True,
  }
  for name in names:
    (tmp_path / name).write_bytes(b"x")
  (tmp_path / f"run.tmp{dead.pid}").mkdir()  # a user's folder
  (tmp_path / f"run.tmp{dead.pid}" / "results.txt").write_text("mine")
  old = tmp_path / _ours(1, "f.npy", host="00000000")  # another host's, untouched for two days
  old.write_bytes(b"x")
  os.utime(old, (time.time() - 2 * 86400,) * 2)
  EmbeddingCache(tmp_path, "anything")
  assert {p.name for p in tmp_path.iterdir()} == (
      {n for n, kept in names.items() if kept} | {f"run.tmp{dead.pid}"})
  assert (tmp_path / f"run.tmp{dead.pid}" / "results.txt").read_text() == "mine"


def test_at_the_caches_top_only_the_temporaries_of_its_own_file_are_swept(tmp_path):
  from optical_jax.files import fingerprint
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  cache = tmp_path / "cache"
  cache.mkdir()
  memo = cache / _ours(dead.pid, "fingerprints.json")  # a killed run's memo
  other = cache / _ours(dead.pid, "notes.txt")  # not a file the cache's top is written with
  user = cache / f"data.tmp{dead.pid}.csv"
  for path in (memo, other, user):
    path.write_text("x")
  (tmp_path / "file.txt").write_text("content")
  fingerprint.forget()
  fingerprint.file_digest(tmp_path / "file.txt", memo_dir=cache)
  assert not memo.exists() and other.exists() and user.read_text() == "x"
  assert (cache / "fingerprints.json").is_file()
