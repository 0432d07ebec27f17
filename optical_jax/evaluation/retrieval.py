"""Dense retrieval for evaluation: corpus-scale encoding and exact top-k search over it.

A corpus is encoded in chunks of `corpus_chunk` passages (bounded host memory at any size):
each chunk is tokenised, length-sorted and cut into batches of `batch_size` rows per device,
padded to a multiple of `bucket_width` tokens. Batches are dealt round-robin to processes and
each process's run on its local devices in steps of one batch per device (`jax.shard_map`),
so a batch holds the same passages in the same shape however many processes and devices
there are: every process computes its local top-k, and the exact merge of the gathered lists
(ties broken by docid) gives the run file of a one-process run byte for byte.

A `TextEncoder` (settings and programs, compiled once over the run's mesh) holds no
parameters; `TextEncoder.bind(params)` gives the `BoundEncoder` that encodes with them, one
per evaluation, so evaluations of different parameters share nothing but the programs.

Texts are tokenised a chunk ahead of the encoder, in a background thread (`token_cache`); a
corpus file's token ids are kept on disk when `TextEncoder.corpus_cache_dir` is set, so that
later evaluations of it tokenise nothing (`TextEncoder.corpus`). Pooled embeddings are kept
on disk when `TextEncoder.cache_dir` is set, keyed by a fingerprint of the parameters, the
texts (or the corpus's token ids) and every encoder setting that changes a vector
(`embedding_cache`); the top-k merge and reranking live in `search`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from optical_jax.evaluation.corpus_files import scan_corpus
from optical_jax.evaluation.embedding_cache import (EmbeddingCache, params_fingerprint,
                                                    texts_fingerprint)
from optical_jax.evaluation.search import (DeviceTopK, as_run, docid_ranks, gather_top_k,
                                          host_search)
from optical_jax.evaluation.token_cache import CorpusTokens, TextTokens, tokenizer_fingerprint
from optical_jax.files.token_arrays import ids_tokenizer, tokenize_flat
from optical_jax.pooling import pool

TokenFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
_SHARED_PROGRAMS: dict = {}  # by `TextEncoder.programs_key` and the settings that shape them


# ---------------------------------------------------------------------------------------------
# Batch plans: pure functions of the lengths, the same for every process and device count.


def padded_width(length: int, max_length: int, bucket_width: int) -> int:
  """`length` rounded up to a multiple of `bucket_width`, capped at `max_length`: a few fixed
  shapes (compiled once each) with at most `bucket_width - 1` padding tokens per row."""
  return min(max_length, -(-max(length, 1) // bucket_width) * bucket_width)


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
  """Row indices of each batch `[<= batch_size]`: rows sorted by length (ties by position),
  cut every `batch_size`; only the last batch may be short."""
  order = np.argsort(np.asarray(lengths, np.int64), kind="stable")
  return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def deal_steps(widths: Sequence[int], part: int, parts: int, devices: int) -> list[list[int]]:
  """Which batches this process runs in each step: batch `b` (widths ascending, as
  `plan_batches` cuts them) goes to process `b % parts`; a step is up to `devices` of its
  batches of one width (the missing ones run as padding), so that no batch's width depends on
  the number of processes or devices."""
  mine = list(range(part, len(widths), parts))
  steps: list[list[int]] = []
  for b in mine:
    if steps and len(steps[-1]) < devices and widths[steps[-1][0]] == widths[b]:
      steps[-1].append(b)
    else:
      steps.append([b])
  return steps


def share_size(num_texts: int, chunk: int, batch_size: int, part: int, parts: int) -> int:
  """How many of `num_texts` rows process `part` of `parts` encodes, chunk by chunk (known
  before tokenising: every batch but a chunk's last is full)."""
  total = 0
  for start in range(0, num_texts, chunk):
    n = min(chunk, num_texts - start)
    sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    total += sum(sizes[part::parts])
  return total


# ---------------------------------------------------------------------------------------------
# The encoder.


@dataclasses.dataclass
class TextEncoder:
  """What encodes one side of a collection over the run's mesh: a loaded encoder, how it is
  applied and the batch, length and cache settings. Its programs are compiled once, here; it
  holds no parameters: `bind(params)` gives the encoder that encodes with them.

  `mesh` is the run's mesh (`runtime.mesh.data_mesh()`); each process runs its own batches
  on its local devices (`mesh.local_mesh`), a batch per device, split over all the mesh's
  axes. `token_fn(params, input_ids, attention_mask) -> [batch, length, dim]` defaults to the
  encoder's own apply; a trained student with a projection head passes its own.
  `batch_size` is per device; batches are padded to multiples of `bucket_width` tokens.
  With `cache_dir`, pooled embeddings are kept there, keyed by the parameters' fingerprint,
  the texts and these settings, so the same corpus is encoded once across runs (a frozen
  teacher; a final student step and a later evaluation of its checkpoint). With
  `corpus_cache_dir`, corpus files' scans and token ids are kept there (`corpus`), so a
  corpus is read and tokenised once however often it is evaluated.
  """

  encoder: Any  # optical_jax.models.loaded.LoadedEncoder
  mesh: Mesh
  _: dataclasses.KW_ONLY
  token_fn: TokenFn | None = None
  max_length: int = 128
  batch_size: int = 64
  cache_dir: str | Path | None = None
  corpus_chunk: int = 32768  # passages tokenised, encoded and searched at a time
  bucket_width: int = 16
  dtype: str = "float32"  # "bfloat16": computation in bfloat16 (faster where supported)
  corpus_cache_dir: str | Path | None = None  # corpus scans and token ids (`corpus`)
  # Encoders of equal `programs_key` share their compiled programs within the process (the
  # demo's students: each shape traced and compiled once, not once per run). The key must
  # determine what `token_fn` computes (its modules); None: programs of its own.
  programs_key: Hashable | None = None

  def __post_init__(self):
    self.local_mesh = self.mesh.local_mesh
    key = None if self.programs_key is None else (
        self.programs_key, self.encoder.pooling, self.encoder.normalize, self.dtype,
        self.local_mesh)
    if key is not None and key in _SHARED_PROGRAMS:
      self.programs = _SHARED_PROGRAMS[key]
    else:
      self.programs = self._compile()
      if key is not None:
        _SHARED_PROGRAMS[key] = self.programs
    self._tokenizer_key = None  # (tokenizer object, tokenizer_fingerprint)

  def _compile(self) -> dict:
    # Nothing of `self` in the programs' closures (the module's apply, not the encoder's bound
    # method): programs kept for later runs (`programs_key`) keep no run's weights alive.
    module, pooling, normalize = self.encoder.module, self.encoder.pooling, self.encoder.normalize
    mesh = self.local_mesh
    token_fn = self.token_fn or (lambda p, ids, mask: module.apply({"params": p}, ids, mask))
    rows = P(self.mesh.axis_names)  # a batch per local device, over every axis of the mesh
    dtype = jnp.dtype(self.dtype)

    def cast(params):  # bfloat16 weights where asked; LayerNorm statistics are in them too
      return params if dtype == jnp.float32 else jax.tree_util.tree_map(
          lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

    def pooled(params, ids, mask):
      hidden = token_fn(cast(params), ids, mask).astype(jnp.float32)
      return pool(hidden, mask, method=pooling, normalize=normalize)

    def tokens(params, ids, mask):
      return token_fn(cast(params), ids, mask).astype(jnp.float32)

    def tokens_and_pooled(params, ids, mask):  # MaxSim's query side: one forward for both
      hidden = token_fn(cast(params), ids, mask).astype(jnp.float32)
      return hidden, pool(hidden, mask, method=pooling, normalize=normalize)

    # The per-device program is the same on any device count.
    sharded = lambda f, out=rows: jax.jit(jax.shard_map(
        f, mesh=mesh, in_specs=(P(), rows, rows), out_specs=out, check_vma=False))
    # `(params, input_ids, attention_mask)` over the local devices, each device a batch.
    return {"pooled": sharded(pooled), "tokens": sharded(tokens),
            "tokens_and_pooled": sharded(tokens_and_pooled, (rows, rows))}

  def bind(self, params: Any = None, *, cache: bool = True) -> BoundEncoder:
    """This encoder with `params` (default: the loaded encoder's own), replicated on the
    local devices; its pooled embeddings kept in `cache_dir` only where `cache`."""
    params = self.encoder.params if params is None else params
    placed = jax.device_put(params, NamedSharding(self.local_mesh, P()))
    return BoundEncoder(self, params, placed, self.cache_dir if cache else None)

  def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    return ids_tokenizer(self.encoder.tokenizer, self.max_length)(texts)

  def tokenizer_key(self) -> str:
    """The fingerprint of the encoder's tokenizer (`token_cache.tokenizer_fingerprint`)."""
    tokenizer = self.encoder.tokenizer
    if self._tokenizer_key is None or self._tokenizer_key[0] is not tokenizer:
      self._tokenizer_key = (tokenizer, tokenizer_fingerprint(tokenizer))
    return self._tokenizer_key[1]

  def corpus(self, path: str | Path, *, prompt: str = "") -> CorpusTokens:
    """Corpus file `path`'s passages (each prefixed by `prompt`) as token ids to `stream`:
    scanned once (docids, every record checked) and tokenised once per content, tokenizer,
    `max_length` and prompt, both cached under `corpus_cache_dir` when it is set."""
    cache = self.corpus_cache_dir
    return CorpusTokens(scan_corpus(path, cache), self._tokenize,
                        tokenizer_key=self.tokenizer_key(), vocab_size=len(self.encoder.tokenizer),
                        max_length=self.max_length, prompt=prompt, cache_dir=cache)

  def steps(self, flat: np.ndarray, offsets: np.ndarray, part: int, parts: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(rows `[r]`, input_ids and mask `[devices * batch_size, width]`, live `[r]`) per step
    of this process's batches of one chunk (row `i`'s ids `flat[offsets[i]:offsets[i + 1]]`):
    `rows` are positions in the chunk, `live` the slots holding them (the rest is padding)."""
    lengths = np.diff(offsets)
    batches = plan_batches(lengths, self.batch_size)
    widths = [padded_width(int(lengths[b].max()), self.max_length, self.bucket_width)
              for b in batches]
    devices = self.local_mesh.size
    pad_id = self.encoder.config.pad_token_id
    for step in deal_steps(widths, part, parts, devices):
      width, rows = widths[step[0]], self.batch_size
      chosen = np.concatenate([batches[b] for b in step])
      live = np.concatenate([slot * rows + np.arange(len(batches[b]))
                             for slot, b in enumerate(step)])
      # Each chosen row's ids left-aligned, the rest padding: one gather for the step.
      filled = np.arange(width) < lengths[chosen][:, None]
      source = offsets[chosen][:, None] + np.arange(width)
      input_ids = np.full((devices * rows, width), pad_id, np.int32)
      mask = np.zeros((devices * rows, width), np.int32)
      block = np.full((len(chosen), width), pad_id, np.int32)
      block[filled] = flat[source[filled]]
      input_ids[live], mask[live] = block, filled
      yield chosen, input_ids, mask, live


class BoundEncoder:
  """A `TextEncoder` with parameters (`TextEncoder.bind`): what `retrieve` and
  `maxsim_rerank` encode with. Made per evaluation and used by it alone; it fingerprints its
  parameters once, for the embedding cache, and counts the rows it runs through the encoder
  (`encoded_rows`, padding excluded: tests, logs)."""

  def __init__(self, text_encoder: TextEncoder, params: Any, placed: Any,
               cache_dir: str | Path | None):
    self.text_encoder, self.params, self.cache_dir = text_encoder, params, cache_dir
    self.device_params = placed  # on the local devices
    self.encoded_rows = 0

  @functools.cached_property
  def fingerprint(self) -> str:
    """The parameters' fingerprint (`embedding_cache.params_fingerprint`), hashed once."""
    return params_fingerprint(self.params)

  @functools.cached_property
  def token_width(self) -> int:
    """The width of the token vectors it returns: a projection's output where the token
    function has one, not the encoder's hidden size (traced on shapes, nothing computed)."""
    e = self.text_encoder
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    return int(jax.eval_shape(e.token_fn or e.encoder.apply, self.params, ids, ids).shape[-1])

  def corpus(self, path: str | Path, *, prompt: str = "") -> CorpusTokens:
    """`TextEncoder.corpus`."""
    return self.text_encoder.corpus(path, prompt=prompt)

  def _run(self, fn, flat: np.ndarray, offsets: np.ndarray, part: int, parts: int, bar
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, outputs of `fn`) per step; the next step is dispatched before the last one's
    result is fetched, so host work overlaps device work."""
    pending = None
    for rows, input_ids, mask, live in self.text_encoder.steps(flat, offsets, part, parts):
      out = fn(self.device_params, input_ids, mask)
      if pending is not None:
        yield _fetch(*pending, bar)
      pending = (rows, out, live, mask)
      self.encoded_rows += len(rows)
    if pending is not None:
      yield _fetch(*pending, bar)

  def _source(self, texts) -> TextTokens | CorpusTokens:
    return (texts if isinstance(texts, CorpusTokens)
            else TextTokens(texts, self.text_encoder._tokenize))

  def _stream_uncached(self, texts, part: int, parts: int, bar, tokens: dict | None = None
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # The next chunk is tokenised (or read) while this one is encoded.
    chunks = self._source(texts).chunks(self.text_encoder.corpus_chunk)
    program = self.text_encoder.programs["pooled" if tokens is None else "tokens_and_pooled"]
    try:
      for start, flat, offsets in chunks:
        rows, vectors = [], []
        for r, (values, lengths) in self._run(program, flat, offsets, part, parts, bar):
          if tokens is not None:
            hidden, values = values
            tokens.update((start + int(i), h[:n]) for i, h, n in zip(r, hidden, lengths))
          rows.append(start + r)
          vectors.append(values)
        if rows:
          yield np.concatenate(rows), np.concatenate(vectors)
    finally:  # stopped early (an error, a consumer gone): the tokenizer thread stops now
      getattr(chunks, "close", lambda: None)()

  def cache_for(self, texts, part: int, parts: int, *, with_tokens: bool = False
                ) -> EmbeddingCache | None:
    """This process's cache entry for `texts` (strings, or a corpus's `CorpusTokens`), or
    None without `cache_dir`. The key holds everything that changes a vector: parameters,
    the texts or token ids (a corpus's key has its content, tokenizer, length and prompt),
    the tokenizer, architecture, pooling, the batch plan's settings, both compute dtypes, the
    attention implementation, the backend, and `with_tokens`: vectors pooled in the program
    that also returns the tokens (`stream(tokens=...)`), which XLA may round apart."""
    if self.cache_dir is None:
      return None
    e = self.text_encoder
    module = getattr(e.encoder, "module", None)
    module_dtype = getattr(module, "dtype", None)
    settings = [self.fingerprint,
                texts.key if isinstance(texts, CorpusTokens) else texts_fingerprint(texts),
                e.tokenizer_key(), e.encoder.config.to_hf_dict(), e.max_length,
                e.encoder.pooling, e.encoder.normalize, e.batch_size, e.bucket_width,
                e.corpus_chunk, e.dtype, getattr(e.token_fn, "__qualname__", None),
                None if module_dtype is None else jnp.dtype(module_dtype).name,
                getattr(module, "attention", None), jax.default_backend()]
    if with_tokens:
      settings.append("tokens_and_pooled")
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return EmbeddingCache(Path(self.cache_dir).expanduser(), f"{key[:32]}-{part}of{parts}")

  def stream(self, texts: Sequence[str] | CorpusTokens, *, part: int = 0, parts: int = 1,
             desc: str = "encoding", progress: bool = True, tokens: dict | None = None
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pooled embeddings of process `part`'s share of `texts` (strings, or a corpus file's
    token ids from `corpus`; of `parts`), as (rows `[m]`, vectors `[m, dim]` float32) a chunk
    of `corpus_chunk` texts at a time: never the whole matrix in memory. From the cache when
    it has them, into it otherwise. With `tokens` (a dict; small corpora only, it holds them
    all), each row the encoder runs also leaves its token embeddings there, `{row: [length,
    dim]}`, from the same forward pass (MaxSim then encodes no passage twice); rows read
    from the cache leave none."""
    chunk = self.text_encoder.corpus_chunk
    size = share_size(len(texts), chunk, self.text_encoder.batch_size, part, parts)
    bar = tqdm(total=size, desc=desc, unit="passage", unit_scale=True, leave=False,
               disable=not progress)
    try:
      cache = self.cache_for(texts, part, parts, with_tokens=tokens is not None)
      if cache is not None and cache.usable(size, len(texts)):
        for rows, vectors in cache.read(chunk):
          bar.update(len(rows))
          yield rows, vectors
        return
      uncached = self._stream_uncached(texts, part, parts, bar, tokens)
      pieces = uncached
      # A shard is its process's own file; texts every process encodes whole (queries) are
      # written by process 0 alone.
      if cache is not None and (parts > 1 or jax.process_index() == 0):
        pieces = cache.write(size, pieces)
      try:
        yield from pieces
      finally:  # at once, not when the garbage is collected: temporaries, the thread
        pieces.close()
        uncached.close()
    finally:
      bar.close()

  def encode(self, texts: Sequence[str], *, desc: str = "encoding",
             progress: bool = True) -> np.ndarray:
    """Pooled embeddings `[len(texts), dim]` (float32), in the order of `texts`, all on this
    process (queries; for a corpus, `stream` bounds the memory)."""
    out = None
    for rows, vectors in self.stream(texts, desc=desc, progress=progress):
      if out is None:
        out = np.zeros((len(texts), vectors.shape[1]), np.float32)
      out[rows] = vectors
    return out if out is not None else np.zeros((0, 0), np.float32)

  def encode_tokens(self, texts: Sequence[str], *, desc: str = "encoding tokens",
                    progress: bool = True, pooled: bool = False
                    ) -> list[np.ndarray] | tuple[list[np.ndarray], np.ndarray]:
    """Token embeddings of each text, unpadded: a list of `[length_i, dim]` arrays; with
    `pooled`, also the pooled embeddings `[len(texts), dim]` of the same forward pass (what
    `encode` gives, without encoding the texts twice)."""
    flat, offsets = tokenize_flat(self.text_encoder._tokenize, texts)
    return self.encode_token_ids(flat, offsets, desc=desc, progress=progress, pooled=pooled)

  def encode_token_ids(self, flat: np.ndarray, offsets: np.ndarray, *,
                       desc: str = "encoding tokens", progress: bool = False,
                       pooled: bool = False
                       ) -> list[np.ndarray] | tuple[list[np.ndarray], np.ndarray]:
    """`encode_tokens` of texts already tokenised: row i's ids `flat[offsets[i]:offsets[i + 1]]`
    (a corpus's cached ids: MaxSim's candidates)."""
    count = len(offsets) - 1
    out: list[np.ndarray | None] = [None] * count
    vectors = None
    with tqdm(total=count, desc=desc, unit="text", leave=False, disable=not progress) as bar:
      fn = self.text_encoder.programs["tokens_and_pooled" if pooled else "tokens"]
      for rows, (values, lengths) in self._run(fn, flat, offsets, 0, 1, bar):
        hidden = values[0] if pooled else values
        if pooled:
          if vectors is None:
            vectors = np.zeros((count, values[1].shape[1]), np.float32)
          vectors[rows] = values[1]
        for i, h, n in zip(rows, hidden, lengths):
          out[i] = h[:n]
    if pooled:
      return out, vectors if vectors is not None else np.zeros((0, 0), np.float32)
    return out


def _fetch(rows: np.ndarray, out: jax.Array, live: np.ndarray, mask: np.ndarray, bar
           ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
  """(rows, (this step's outputs of live rows, their token counts)), the bar moved on;
  `out` may be a tuple of outputs, each row-sliced."""
  values = (tuple(np.asarray(o, np.float32)[live] for o in out) if isinstance(out, tuple)
            else np.asarray(out, np.float32)[live])
  bar.update(len(rows))
  return rows, (values, mask[live].sum(axis=1))


# ---------------------------------------------------------------------------------------------
# Retrieval.


def retrieve(queries: Mapping[str, str], corpus: Mapping[str, str] | CorpusTokens, *,
             query_encoder: BoundEncoder, doc_encoder: BoundEncoder, k: int = 100,
             progress: bool = True, similarity: str = "dot",
             query_vectors: np.ndarray | None = None,
             doc_tokens: dict | None = None) -> dict[str, dict[str, float]]:
  """Encodes the queries (every process; `query_vectors` `[len(queries), dim]` where they
  are encoded already) and the corpus (`{docid: text}`, or a corpus file's token ids from
  `doc_encoder.corpus`; each process its share, a chunk at a time), keeps each process's
  exact top-`k` per query, and merges them across processes: the same run on any number of
  processes and devices. `doc_tokens`: `BoundEncoder.stream`'s `tokens`, by corpus row."""
  query_ids = list(queries)
  if query_vectors is None:
    query_vectors = query_encoder.encode([queries[q] for q in query_ids], desc="queries",
                                         progress=False)
  if isinstance(corpus, CorpusTokens):
    doc_ids, ranks, texts = corpus.docids, corpus.scan.ranks(), corpus
  else:
    doc_ids = list(corpus)
    ranks, texts = docid_ranks(doc_ids), [corpus[d] for d in doc_ids]
  search = DeviceTopK(query_vectors, k, similarity)
  part, parts = jax.process_index(), jax.process_count()
  for rows, vectors in doc_encoder.stream(texts, part=part, parts=parts, desc="passages",
                                          progress=progress and part == 0, tokens=doc_tokens):
    search.add(rows, vectors)
  best, uncertain = search.result(ranks)
  # Rare: near-ties at the device's cut-off; this process's share is read again (from the
  # embedding cache where it is on).
  best = host_search(best, uncertain, query_vectors,
                     doc_encoder.stream(texts, part=part, parts=parts, progress=False,
                                        tokens=doc_tokens), ranks, k,
                     similarity) if uncertain.any() else best
  return as_run(gather_top_k(best, ranks, min(k, len(doc_ids))), query_ids, doc_ids)
