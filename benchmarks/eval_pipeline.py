"""The evaluation's host pipeline, passages/s: does it keep up with the tokenizer?

  python benchmarks/eval_pipeline.py                     # 20,000 passages of ~60 words
  python benchmarks/eval_pipeline.py --passages 100000 --chunk 8192

A synthetic JSONL corpus (`--passages` passages of `--words` words drawn from the tokenizer's
whole-word pieces, ~360 characters each, like CIRAL's Somali passages) and 100 queries are
retrieved with a 1-layer, 32-wide BERT with random weights (made here with torch, MiniLM's
tokenizer), so that the model costs little and the host's work shows:

- tokenizer alone: the tokenizer's own calls as evaluation makes them (a chunk at a time, in
  batches of `token_arrays.TOKENIZE_BATCH` texts, through `token_arrays.ids_tokenizer`: the
  Rust backend's `encode_batch_fast`); the reference of the ratios;
- tokenizer alone, transformers' call: the same texts through `tokenizer(texts,
  truncation=True, max_length=...)`, the usual way to call it;
- corpus scan: docids read and every record checked (`scan_corpus`, done once before
  training by `check_collections`, then cached);
- first evaluation: `retrieve` of the corpus file, tokenised in a background thread a chunk
  (`--chunk` passages, `eval.corpus_chunk`) ahead of encoding, the ids written to the token
  cache, scores and top-100 merged; its ratio to the tokenizer alone is the point (>= 80%);
- second evaluation: the same from the cached token ids (nothing tokenised);
- first evaluation with a model that computes nothing (zeros): the host's own pipeline
  (reading, tokenising, padding, dispatch, search), as it runs beside an accelerator. On a
  CPU-only machine the tiny model's compute takes cores the tokenizer would use, so the rows
  above also show how many cores there are to share.

Then the search alone, before and after it moved to the device: `--passages` random
384-wide vectors (CIRAL's students) against the queries, top 100, `--chunk` at a time, as
the host searched (float64 numpy scores of every chunk, `merge_top_k`) and as `DeviceTopK`
does (float32 scores and the running top-k on the device, the candidates rescored on the
host), with the host's share of an evaluation's time for each (the second evaluation's
encoding and reading, plus that search). On a CPU-only machine the "device" is this CPU too.

Every pass is timed after an untimed one of the same shapes (compilation), in `--repeats`
rounds of every stage in turn (medians), so that a shared machine's load weighs on all rows
alike. The embedding cache is off throughout: each evaluation encodes.
`TOKENIZERS_PARALLELISM` is left as it is (unset: the Rust tokenizer uses every core, as in
a training run; `false`: one core, the others free for the encoder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import cpu_description


def arguments() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--passages", type=int, default=20_000)
  parser.add_argument("--words", type=int, default=60, help="words per passage")
  parser.add_argument("--chunk", type=int, default=2048,
                      help="eval.corpus_chunk: passages tokenised, encoded and searched at a time")
  parser.add_argument("--batch", type=int, default=64, help="eval.batch_size")
  parser.add_argument("--length", type=int, default=128, help="eval.max_length")
  parser.add_argument("--queries", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3, help="rounds of every stage in turn; "
                      "the table has each stage's median")
  parser.add_argument("--heads", type=int, default=4, help="attention heads of the tiny BERT "
                      "(4 as tests/helpers.save_tiny_bert; XLA on CPU runs 8-wide heads slowly)")
  parser.add_argument("--workdir", default=None, help="where the corpus and caches go "
                      "(default: a temporary directory)")
  return parser.parse_args()


def tiny_bert(directory: Path, heads: int) -> Path:
  """A 1-layer, 32-wide random BERT of `heads` attention heads, MiniLM's tokenizer files."""
  import shutil
  import torch
  from transformers import BertConfig, BertModel
  from optical_jax.data.assets import minilm_checkpoint_dir
  torch.manual_seed(0)
  config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=heads, intermediate_size=128, max_position_embeddings=512)
  BertModel(config).eval().save_pretrained(directory)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (minilm_checkpoint_dir() / name).exists():
      shutil.copy(minilm_checkpoint_dir() / name, directory / name)
  return directory


def synthetic_corpus(path: Path, tokenizer, passages: int, words: int, seed: int = 0) -> None:
  import numpy as np
  vocab = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii()
                 and 3 <= len(w) <= 6)
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(passages):
      text = " ".join(rng.choice(vocab, words))
      f.write(json.dumps({"docid": f"doc-{i:07d}", "title": "", "text": text}) + "\n")


def main() -> None:
  args = arguments()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from optical_jax.evaluation.corpus_files import forget_scans, scan_corpus
  from optical_jax.evaluation.io import iter_corpus
  from optical_jax.evaluation.retrieval import TextEncoder, retrieve
  from optical_jax.files.token_arrays import TOKENIZE_BATCH, ids_tokenizer
  from optical_jax.models.hf_checkpoint import load_encoder
  from optical_jax.runtime.mesh import data_mesh

  root = Path(args.workdir or tempfile.mkdtemp(prefix="eval_pipeline-"))
  root.mkdir(parents=True, exist_ok=True)
  model = root / f"tiny_bert-{args.heads}heads"
  if not (model / "config.json").exists():
    tiny_bert(model, args.heads)
  encoder = load_encoder(model)
  corpus = root / f"corpus-{args.passages}x{args.words}.jsonl"
  if not corpus.exists():
    synthetic_corpus(corpus, encoder.tokenizer, args.passages, args.words)
  queries = {f"q{i}": text for i, (_, _, text) in zip(range(args.queries),
                                                       iter_corpus(corpus))}
  texts = [text for _, _, text in iter_corpus(corpus)]
  characters = sum(map(len, texts)) / len(texts)

  tokenize = ids_tokenizer(encoder.tokenizer, args.length)

  def tokenizer_alone(call=tokenize) -> None:  # in the calls evaluation makes: a chunk, in batches
    for start in range(0, len(texts), args.chunk):
      chunk = texts[start:start + args.chunk]
      for s in range(0, len(chunk), TOKENIZE_BATCH):
        call(chunk[s:s + TOKENIZE_BATCH])

  def transformers_call() -> None:
    tokenizer_alone(lambda batch: encoder.tokenizer(batch, truncation=True,
                                                    max_length=args.length,
                                                    padding=False)["input_ids"])

  def scan() -> None:
    forget_scans()
    scan_corpus(corpus)

  def nothing(params, input_ids, attention_mask):  # a model that costs nothing
    # Token features from the ids alone: distinct scores, as a model's (all-equal ones would
    # send every query's search back to the host).
    return ((input_ids[..., None] * jnp.arange(1, 33)) % 97).astype(jnp.float32) / 97

  # One encoder per model for all evaluations, as a training run keeps them: compiled once.
  encoders = {fn: TextEncoder(encoder, data_mesh(), batch_size=args.batch,
                              max_length=args.length, corpus_chunk=args.chunk, token_fn=fn)
              for fn in (None, nothing)}

  def evaluation(cache: Path | None, token_fn=None):
    text_encoder = encoders[token_fn]
    text_encoder.corpus_cache_dir = cache
    source, bound = text_encoder.corpus(corpus), text_encoder.bind()
    run = retrieve(queries, source, query_encoder=bound, doc_encoder=bound, k=100,
                   progress=False)
    return run, source.tokenized

  def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out

  scan()
  timed(tokenizer_alone)  # warm-up
  timed(transformers_call)
  evaluation(None)  # compiles every shape, caches nothing
  evaluation(None, nothing)
  # Rounds of every stage in turn, medians: a shared machine's load changes all rows alike.
  times = {name: [] for name in ("tokenizer", "scan", "first", "second", "host",
                                  "transformers")}
  for _ in range(args.repeats):
    times["tokenizer"].append(timed(tokenizer_alone)[0])
    times["transformers"].append(timed(transformers_call)[0])
    times["scan"].append(timed(scan)[0])
    cache = Path(tempfile.mkdtemp(prefix="corpus-", dir=root))
    first_s, (first_run, first_tokenized) = timed(lambda: evaluation(cache))
    second_s, (second_run, second_tokenized) = timed(lambda: evaluation(cache))
    assert first_tokenized == len(texts) and second_tokenized == 0, (first_tokenized,
                                                                     second_tokenized)
    assert first_run == second_run
    host_s, (_, host_tokenized) = timed(lambda: evaluation(None, nothing))
    assert host_tokenized == len(texts)
    times["first"].append(first_s)
    times["second"].append(second_s)
    times["host"].append(host_s)
  tokenizer_s, scan_s, first_s, second_s, host_s, transformers_s = (
      statistics.median(times[k]) for k in times)

  n = len(texts)
  rate = lambda seconds: n / seconds
  print(f"CPU: {cpu_description()}")
  print(f"JAX {jax.__version__} on {jax.default_backend()} ({jax.local_device_count()} device(s)); "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}")
  print(f"{n:,} passages of {args.words} words ({characters:.0f} characters), "
        f"{args.queries} queries, medians of {args.repeats} rounds, "
        f"eval.corpus_chunk={args.chunk}, eval.batch_size={args.batch}, "
        f"eval.max_length={args.length}; model: BERT 1 layer x 32, {args.heads} heads "
        "(random weights)\n")
  rows = [("tokenizer alone (its Rust backend, as evaluation calls it)", tokenizer_s, "1.00"),
          ("tokenizer alone, transformers' call", transformers_s,
           f"{tokenizer_s / transformers_s:.2f}"),
          ("corpus scan (docids, every record checked)", scan_s, ""),
          ("first evaluation (tokenise in the background + encode + search)", first_s,
           f"{tokenizer_s / first_s:.2f}"),
          ("second evaluation (cached token ids + encode + search)", second_s,
           f"{tokenizer_s / second_s:.2f}"),
          ("first evaluation, a model that computes nothing (the host's own work)", host_s,
           f"{tokenizer_s / host_s:.2f}")]
  print("| stage | seconds | passages/s | vs tokenizer alone |")
  print("|---|---:|---:|---:|")
  for name, seconds, ratio in rows:
    print(f"| {name} | {seconds:.2f} | {rate(seconds):,.0f} | {ratio} |")
  np.testing.assert_equal(len(first_run), args.queries)
  search_table(args, n, second_s, timed)


def search_table(args, n: int, evaluation_s: float, timed) -> None:
  """The search alone, on the host (before) and on the device (after), and its share."""
  import jax
  import numpy as np
  from optical_jax.evaluation.search import DeviceTopK, docid_ranks, host_search
  rng, k, dim = np.random.default_rng(0), 100, 384
  docs = rng.normal(size=(n, dim)).astype(np.float32)
  queries = rng.normal(size=(args.queries, dim)).astype(np.float32)
  ranks = docid_ranks([f"d{i}" for i in range(n)])
  chunks = lambda: ((np.arange(s, min(s + args.chunk, n)), docs[s:s + args.chunk])
                    for s in range(0, n, args.chunk))
  everything = np.ones(args.queries, bool)

  def on_host():  # every query searched by the host, as before
    placeholder = (np.zeros((args.queries, min(k, n)), np.float32),
                   np.zeros((args.queries, min(k, n)), np.int64))
    return host_search(placeholder, everything, queries, chunks(), ranks, k)

  rescoring = []

  def on_device():
    search = DeviceTopK(queries, k)
    for rows, chunk in chunks():
      search.add(rows, chunk)
    jax.block_until_ready(search.state)
    start = time.perf_counter()  # the host's own part: reading back, rescoring, ranking
    best, uncertain = search.result(ranks)
    best = host_search(best, uncertain, queries, chunks(), ranks, k)
    rescoring.append(time.perf_counter() - start)
    return best

  on_host(), on_device()  # compiles
  times = {"host": [], "device": []}
  for _ in range(args.repeats):
    host_s, before = timed(on_host)
    device_s, after = timed(on_device)
    assert all((a == b).all() for a, b in zip(before, after))
    times["host"].append(host_s)
    times["device"].append(device_s)
  host_s, device_s = (statistics.median(t) for t in times.values())
  print(f"\n### Search alone: {n:,} passages x {args.queries} queries, {dim} wide, top {k}, "
        f"{args.chunk} passages a chunk (the same top {k} both ways)\n")
  print("| search | seconds | share of an evaluation (second evaluation + this search) |")
  print("|---|---:|---:|")
  for name, seconds in (("on the host, float64 numpy (before)", host_s),
                        ("on the device, DeviceTopK (after)", device_s),
                        ("of which the host's: candidates read back, rescored, ranked",
                         statistics.median(rescoring[1:]))):
    print(f"| {name} | {seconds:.2f} | {seconds / (evaluation_s + seconds):.0%} |")


if __name__ == "__main__":
  main()
