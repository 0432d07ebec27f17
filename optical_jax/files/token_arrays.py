"""Token ids of many texts as one flat array with offsets: a few bytes a token on the host
(memory-mapped from disk when cached), never a Python object per sentence.

`TokenColumn` is what training batches are cut from (`data.batching.BucketedBatches`);
`ColumnWriter` fills one from a stream of texts, a chunk at a time, straight into a file;
`tokenize_flat` is the one way texts become flat ids (training columns, corpus token caches),
`ids_tokenizer` the one way a tokenizer is called for them.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from optical_jax.files.cache_files import temporary, writing


TOKENIZE_BATCH = 4096  # texts per tokenizer call (bounds its Python objects' memory)
Tokenize = Callable[[Sequence[str]], list[list[int]]]


def ids_tokenizer(tokenizer: Any, max_length: int) -> Tokenize:
  """texts -> their token ids, truncated to `max_length`, special tokens added, unpadded:
  `tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]`, id for id.

  A fast tokenizer is called through its own copy of the Rust backend (truncation set once,
  so no other caller's settings are touched) and `encode_batch_fast`, which computes no
  character offsets and builds none of transformers' per-text Python objects: 1.4x the
  passages/s of the transformers call (benchmarks/eval_pipeline.py), with less of the GIL held
  while a batch is encoded beside it. Any other tokenizer is called as transformers does."""
  backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(
      tokenizer, "is_fast", False) else None
  if backend is None or not hasattr(backend, "encode_batch_fast"):
    return lambda texts: tokenizer(list(texts), truncation=True, max_length=max_length,
                                   padding=False, return_attention_mask=False,
                                   return_token_type_ids=False)["input_ids"]
  own = _own_backend(tokenizer, backend, max_length)
  return lambda texts: [e.ids for e in own.encode_batch_fast(list(texts),
                                                             add_special_tokens=True)]


_BACKENDS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_BACKENDS_LOCK = threading.Lock()


def _own_backend(tokenizer: Any, backend: Any, max_length: int) -> Any:
  """A copy of `backend` set up as transformers sets it for a truncating call, one per
  tokenizer and length (a copy costs a serialisation of the vocabulary)."""
  with _BACKENDS_LOCK:
    copies = _BACKENDS.setdefault(tokenizer, {})
    side = getattr(tokenizer, "truncation_side", "right")
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    # Tokens added to the tokenizer since (its length) replace the length's copy.
    state = (id(backend), len(tokenizer), side, split)
    if copies.get(max_length, (None,))[0] != state:
      own = type(backend).from_str(backend.to_str())
      own.no_padding()
      own.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
      own.encode_special_tokens = split
      copies[max_length] = (state, own)
    return copies[max_length][1]


def id_dtype(vocab_size: int) -> np.dtype:
  """uint16 where every id of a `vocab_size` vocabulary fits, else int32."""
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def flatten(ids: list[list[int]], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
  """(flat `[tokens]`, offsets `[len(ids) + 1]` int64) of token id lists."""
  offsets = np.zeros(len(ids) + 1, np.int64)
  np.cumsum(np.fromiter(map(len, ids), np.int64, count=len(ids)), out=offsets[1:])
  flat = np.fromiter(itertools.chain.from_iterable(ids), dtype, count=int(offsets[-1]))
  return flat, offsets


def tokenize_flat(tokenize: Tokenize, texts: Sequence[str], dtype=np.int32, *,
                  batch: int = TOKENIZE_BATCH) -> tuple[np.ndarray, np.ndarray]:
  """`flatten(tokenize(texts))`, `batch` texts per tokenizer call: the tokenizer's Python
  objects (lists, `Encoding`s with their token strings; ~10 KB a passage) live for one batch,
  not for a whole chunk."""
  if len(texts) <= batch:
    return flatten(tokenize(texts), dtype)
  pieces = [flatten(tokenize(texts[s:s + batch]), dtype) for s in range(0, len(texts), batch)]
  offsets = [pieces[0][1]]
  for _, more in pieces[1:]:
    offsets.append(more[1:] + offsets[-1][-1])
  return np.concatenate([flat for flat, _ in pieces]), np.concatenate(offsets)


class TokenColumn:
  """The token ids of `len(self)` texts: row `i` is `flat[offsets[order[i]]:offsets[order[i] +
  1]]` (`order` defaults to the identity, so rows may be stored in another order than read).

  Args:
    flat: int `[total tokens]` (uint16/uint32/int32, possibly a read-only memmap).
    offsets: int64 `[stored rows + 1]`, ascending from 0.
    order: int64 `[rows]`, the stored row of each row; None: row i is stored row i.
    fingerprint: what the ids were made from (file, tokenizer, settings, rows), for the caches
      keyed by them (the teacher's token vectors).
  """

  def __init__(self, flat: np.ndarray, offsets: np.ndarray, order: np.ndarray | None = None,
               fingerprint: str = ""):
    self.flat, self.offsets = flat, np.asarray(offsets, np.int64)
    self.order = None if order is None else np.asarray(order, np.int64)
    self.fingerprint = fingerprint
    stored = self.offsets[1:] - self.offsets[:-1]
    self.lengths = (stored if self.order is None else stored[self.order]).astype(np.int32)
    self.starts = self.offsets[:-1] if self.order is None else self.offsets[:-1][self.order]

  @classmethod
  def from_sequences(cls, sequences: Iterable[Sequence[int]], dtype=np.int32,
                     fingerprint: str = "") -> "TokenColumn":
    """A column of in-memory token id sequences (lists or arrays)."""
    arrays = [np.asarray(s, dtype) for s in sequences]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype)
    return cls(flat, offsets, fingerprint=fingerprint)

  def __len__(self) -> int:
    return len(self.lengths)

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(self.starts[i])
    return np.asarray(self.flat[start:start + int(self.lengths[i])], np.int32)

  def __iter__(self) -> Iterator[np.ndarray]:
    return (self[i] for i in range(len(self)))

  def select(self, rows: np.ndarray) -> "TokenColumn":
    """The column of `rows` (indices into this one), sharing the flat array."""
    base = np.arange(len(self)) if self.order is None else self.order
    return TokenColumn(self.flat, self.offsets, base[np.asarray(rows, np.int64)],
                       self.fingerprint)

  def gather(self, positions: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into `flat` of rows `positions`, `[n, width]` (clipped to valid), and the
    mask of real tokens `[n, width]` (bool; each row cut to `width`)."""
    positions = np.asarray(positions, np.int64)
    cols = np.arange(width, dtype=np.int64)
    mask = cols[None, :] < self.lengths[positions][:, None]
    index = self.starts[positions][:, None] + cols[None, :]
    return np.where(mask, index, 0), mask

  def pad(self, positions: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, int32 `[len(positions), width]`, of rows `positions`
    (padded with `pad_id`, each cut to `width`), as `shapes.pad_sequences` pads them."""
    index, mask = self.gather(positions, width)
    ids = np.where(mask, np.asarray(self.flat[index.reshape(-1)]).reshape(index.shape)
                   if len(self.flat) else 0, pad_id).astype(np.int32)
    return ids, mask.astype(np.int32)


class ColumnWriter:
  """Tokenises texts (truncated to `max_length`, special tokens added, no padding) as they
  come, `add` by `add`, into `path`.ids.npy (flat, `id_dtype(vocab_size)`) and
  `path`.offsets.npy (int64 `[rows + 1]`): the ids go straight to a temporary file, and
  `finish` writes both under their names, offsets last (their presence vouches for the ids).
  Host memory: one chunk's Python lists, never the column's."""

  CHUNK = TOKENIZE_BATCH  # rows a caller gathers per `add`

  def __init__(self, path: str | Path, tokenizer: Any, *, max_length: int, vocab_size: int):
    self.path, self.tokenizer, self.max_length = Path(path), tokenizer, max_length
    self.dtype = id_dtype(vocab_size)
    self._tokenize = ids_tokenizer(tokenizer, max_length)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._tmp = temporary(Path(f"{self.path}.ids"))
    self._raw = open(self._tmp, "wb")
    self._lengths: list[np.ndarray] = []

  def add(self, texts: Sequence[str]) -> None:
    flat, offsets = tokenize_flat(self._tokenize, texts, self.dtype)
    with writing(self._tmp, "token cache", cleanup=[self._tmp]):
      self._raw.write(flat.tobytes())
    self._lengths.append(np.diff(offsets))

  def finish(self, *, expected: int | None = None) -> tuple[Path, Path]:
    """Writes the column's two files; returns their paths."""
    self._raw.close()
    lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
    if expected is not None and len(lengths) != expected:
      self._tmp.unlink(missing_ok=True)
      raise ValueError(f"{self.path}: expected {expected} texts, got {len(lengths)}")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids_path, offsets_path = Path(f"{self.path}.ids.npy"), Path(f"{self.path}.offsets.npy")
    # The raw ids become an .npy file: a header, then the bytes written so far.
    tmp_npy, tmp_offsets = temporary(ids_path), temporary(offsets_path)
    with writing(ids_path, "token cache", cleanup=[tmp_npy, tmp_offsets, self._tmp]):
      with open(tmp_npy, "wb") as out, open(self._tmp, "rb") as raw:
        np.lib.format.write_array_header_1_0(out, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": (int(offsets[-1]),)})
        while block := raw.read(1 << 24):
          out.write(block)
      self._tmp.unlink()
      np.save(tmp_offsets, offsets)
    os.replace(tmp_npy, ids_path)
    os.replace(tmp_offsets, offsets_path)
    return ids_path, offsets_path


def tokenize_column(tokenizer: Any, texts: Sequence[str], *, max_length: int,
                    path: str | Path, vocab_size: int) -> TokenColumn:
  """`texts` tokenised into `path` (`ColumnWriter`) and opened (`open_column`)."""
  writer = ColumnWriter(path, tokenizer, max_length=max_length, vocab_size=vocab_size)
  writer.add(texts)
  writer.finish(expected=len(texts))
  return open_column(path)


def open_column(path: str | Path, *, order: np.ndarray | None = None,
                fingerprint: str = "") -> TokenColumn | None:
  """The column `tokenize_column` wrote at `path`, memory-mapped; None when it is absent or
  its two files disagree (a killed write: the caller tokenises again)."""
  ids_path, offsets_path = Path(f"{path}.ids.npy"), Path(f"{path}.offsets.npy")
  if not (ids_path.is_file() and offsets_path.is_file()):
    return None
  try:
    offsets = np.load(offsets_path)
    flat = np.load(ids_path, mmap_mode="r")
  except (ValueError, OSError, EOFError):
    return None
  if offsets.ndim != 1 or not len(offsets) or offsets[0] != 0 or offsets[-1] != len(flat):
    return None
  return TokenColumn(flat, offsets, order, fingerprint)
