"""Token ids of the texts an evaluation encodes, a chunk at a time: `(first row, flat ids,
offsets)`, where row `i` of the chunk is `flat[offsets[i]:offsets[i + 1]]` (a few bytes a
token, never a Python list per text once the chunk is made).

Texts are tokenised in a background thread one chunk ahead of the encoder (fast tokenizers
release the GIL), so the host keeps the tokenizer busy while the device encodes.

A corpus file's ids are kept on disk (`CorpusTokens`): `cache_dir/tokens/KEY/` holds `ids.bin`
(flat uint16 ids where the vocabulary fits, else int32), `offsets.npy` (int64 `[passages +
1]`) and `meta.json` (written last), KEY a digest of the corpus file's content fingerprint,
the tokenizer's, the maximum length and the passage prompt. Later evaluations (dev steps, the
final one, `eval.py`) memory-map them and tokenise nothing; an entry whose files do not hold
together is removed with a warning and built again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from optical_jax.evaluation.corpus_files import CorpusScan
from optical_jax.evaluation.io import iter_corpus
from optical_jax.files.cache_files import (BrokenCache, npy_header, remove, set_aside,
                                           sweep_temporaries, temporary, writing)
from optical_jax.files.fingerprint import file_version
from optical_jax.files.layout import CorpusCache
from optical_jax.files.textfiles import DataFormatError
from optical_jax.files.token_arrays import id_dtype, tokenize_flat
from optical_jax.runtime.prefetch import Prefetched

TOKENS_FORMAT = 2  # bump when the stored ids change meaning: older entries are not read
Chunk = tuple[int, np.ndarray, np.ndarray]  # (first row, flat ids, offsets `[rows + 1]` from 0)
Tokenize = Callable[[Sequence[str]], list[list[int]]]
TOKENIZER_THREAD = "optical_jax-tokenize"


def tokenizer_fingerprint(tokenizer) -> str:
  """A digest of what decides a tokenizer's ids: its class, its full definition (a fast
  tokenizer's `tokenizer.json` state, less the truncation and padding each call sets; a slow
  one's vocabulary and settings), its special tokens and truncation side. Not its path: the
  same tokenizer elsewhere gives the same digest."""
  h = hashlib.blake2b(digest_size=16)
  h.update(type(tokenizer).__name__.encode())
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    h.update(json.dumps(state, sort_keys=True).encode())
  else:
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    settings = {k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items()
                if "file" not in k and k != "name_or_path"}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
  h.update(json.dumps([sorted(map(str, tokenizer.all_special_tokens)),
                       getattr(tokenizer, "truncation_side", "right"),
                       len(tokenizer)]).encode())
  return h.hexdigest()


class TextTokens:
  """Texts in memory, tokenised `size` at a time (in a background thread when there is more
  than one chunk)."""

  def __init__(self, texts: Sequence[str], tokenize: Tokenize):
    self.texts, self.tokenize = texts, tokenize

  def __len__(self) -> int:
    return len(self.texts)

  def _chunks(self, size: int) -> Iterator[Chunk]:
    for start in range(0, len(self.texts), size):
      flat, offsets = tokenize_flat(self.tokenize, self.texts[start:start + size])
      yield start, flat, offsets

  def chunks(self, size: int) -> Iterator[Chunk]:
    if len(self.texts) <= size:
      return self._chunks(size)
    return Prefetched(self._chunks(size), name=TOKENIZER_THREAD)


class CorpusTokens:
  """The token ids of a corpus file's passages (each prefixed by `prompt`, cut at
  `max_length` tokens), from the cache under `cache_dir` when it holds them, else tokenised
  a chunk at a time from the file (streamed: never the whole text in memory) in a background
  thread and stored there as they go, for the next evaluation.

  `docids` and `len()` come from the corpus scan (`corpus_files.scan_corpus`); `key`
  identifies the ids (content, tokenizer, length, prompt) for the embedding cache.
  `tokenized` counts the passages this object tokenised (tests, logs).
  """

  def __init__(self, scan: CorpusScan, tokenize: Tokenize, *, tokenizer_key: str,
               vocab_size: int, max_length: int, prompt: str = "",
               cache_dir: str | os.PathLike | None = None):
    self.scan, self.tokenize, self.max_length, self.prompt = scan, tokenize, max_length, prompt
    self.dtype = id_dtype(vocab_size)
    self.key = hashlib.sha256(json.dumps(
        [TOKENS_FORMAT, scan.fingerprint, tokenizer_key, max_length, prompt]).encode()
    ).hexdigest()[:32]
    self.directory = (CorpusCache(cache_dir).tokens / self.key
                      if cache_dir is not None else None)
    self.tokenized = 0

  @property
  def docids(self) -> list[str]:
    return self.scan.docids

  @property
  def path(self) -> Path:
    return self.scan.path

  def __len__(self) -> int:
    return self.scan.passages

  # -- the cache entry -------------------------------------------------------------------------

  def _files(self, directory: Path) -> tuple[Path, Path, Path]:
    return directory / "ids.bin", directory / "offsets.npy", directory / "meta.json"

  def problem(self) -> str | None:
    """Why the cache entry cannot be trusted, or None: meta, offsets and ids agree with each
    other, with the corpus and with the settings."""
    ids, offsets_path, meta_path = self._files(self.directory)
    try:
      meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      return f"{meta_path.name}: unreadable ({e})"
    expected = {"format": TOKENS_FORMAT, "key": self.key, "passages": len(self),
                "dtype": self.dtype.name}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
      return f"{meta_path.name}: {json.dumps(meta)[:200]} is not {json.dumps(expected)}"
    try:
      shape, dtype, _ = npy_header(offsets_path)
    except BrokenCache as e:
      return f"{offsets_path.name}: {e}"
    if shape != (len(self) + 1,) or dtype != np.int64:
      return f"{offsets_path.name}: {dtype} {shape}, expected int64 [{len(self) + 1}]"
    offsets = np.load(offsets_path)
    lengths = np.diff(offsets)
    if offsets[0] != 0 or (lengths < 0).any() or (lengths > self.max_length).any():
      return f"{offsets_path.name}: offsets out of order or rows longer than {self.max_length}"
    size = ids.stat().st_size if ids.is_file() else -1
    if size != int(offsets[-1]) * self.dtype.itemsize:
      return (f"{ids.name}: {size} bytes where {int(offsets[-1])} {self.dtype.name} ids take "
              f"{int(offsets[-1]) * self.dtype.itemsize}")
    return None

  def cached(self) -> bool:
    """Whether the cache holds these ids, sound; a broken entry is removed (with a warning
    naming its file) so that it is built again."""
    if self.directory is None:
      return False
    sweep_temporaries(self.directory.parent)
    if not self.directory.is_dir():
      return False
    problem = self.problem()
    if problem is None:
      return True
    set_aside([self.directory / problem.split(":")[0], self.directory], problem,
              "corpus token cache entry")
    return False

  # -- chunks ----------------------------------------------------------------------------------

  def chunks(self, size: int) -> Iterator[Chunk]:
    """`(first row, flat ids, offsets)` of `size` passages at a time, in file order."""
    if self.cached():
      return self._read(size)
    return Prefetched(self._build(size), name=TOKENIZER_THREAD)

  def _read(self, size: int) -> Iterator[Chunk]:
    ids, offsets_path, _ = self._files(self.directory)
    offsets = np.load(offsets_path)
    flat = (np.memmap(ids, dtype=self.dtype, mode="r", shape=(int(offsets[-1]),))
            if offsets[-1] else np.zeros(0, self.dtype))
    for start in range(0, len(self), size):
      piece = offsets[start:start + size + 1]
      yield start, np.asarray(flat[piece[0]:piece[-1]]), piece - piece[0]

  def _build(self, size: int) -> Iterator[Chunk]:
    """Reads, tokenises and yields the corpus a chunk at a time (run in the background
    thread), writing the ids into a temporary entry renamed into place once complete."""
    path, docids = self.path, self.docids
    changed = DataFormatError(f"{path}: changed since it was scanned (its docids differ); run "
                              "again")
    version = file_version(path)
    tmp = temporary(self.directory) if self.directory is not None else None
    out, parts, total = None, [np.zeros(1, np.int64)], 0
    ids_tmp = tmp / "ids.bin" if tmp is not None else None
    named = self.directory / "ids.bin" if tmp is not None else None  # errors name the entry
    try:
      if tmp is not None:
        with writing(named, "corpus token cache", cleanup=[tmp]):
          tmp.mkdir(parents=True, exist_ok=True)
          out = open(ids_tmp, "wb")
      records = iter_corpus(path)
      start = 0
      while start < len(docids):
        texts = []
        for _, docid, text in itertools.islice(records, size):
          if start + len(texts) >= len(docids) or docid != docids[start + len(texts)]:
            raise changed
          texts.append(self.prompt + text)
        if len(texts) != min(size, len(docids) - start):
          raise changed
        flat, offsets = tokenize_flat(self.tokenize, texts, self.dtype)
        self.tokenized += len(texts)
        if out is not None:
          with writing(named, "corpus token cache", cleanup=[tmp]):
            out.write(flat.tobytes())
          parts.append(offsets[1:] + total)
          total += len(flat)
        yield start, flat, offsets
        start += len(texts)
      if next(records, None) is not None:
        raise changed
      if out is None:
        return
      if file_version(path) != version:  # edited meanwhile: these ids may be of either
        return
      with writing(named, "corpus token cache", cleanup=[tmp]):
        out.close()
        with open(tmp / "offsets.npy", "wb") as f:
          np.save(f, np.concatenate(parts))
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
          json.dump({"format": TOKENS_FORMAT, "key": self.key, "passages": len(self),
                     "tokens": total, "dtype": self.dtype.name, "corpus": str(path),
                     "fingerprint": self.scan.fingerprint, "max_length": self.max_length,
                     "prompt": self.prompt}, f)
      try:
        os.replace(tmp, self.directory)
      except OSError:  # another process finished the same entry first: keep its
        pass
    finally:
      if out is not None and not out.closed:
        try:
          out.close()
        except OSError:
          pass
      if tmp is not None:  # unfinished, or another process's entry was there first
        remove(tmp)
