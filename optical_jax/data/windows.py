"""Passage-length training examples from sentence bitext (`config.data.pair_window`): windows
of up to N consecutive aligned pairs (in file order), joined with a space on both sides, each
within `max_length` tokens on both sides.

A window is greedy: it takes the next pair while it has fewer than N pairs and both joined
sides still fit (N is `pair_window`, or with `sizes="uniform"` a number drawn from 1..N for
each row a window may start at: a mixture of lengths); a pair longer than `max_length` on its
own is a window of one (truncated as any row is). Windows are a pure function of the rows,
the tokenizers, their prompts, `max_length`, N and `sizes`, never of the devices or processes:
every process finds the same ones, so the batches stay those of any device count. `find_windows`
measures each row's tokens on each side and then tokenises every joined window to check it: a
subword tokenizer may cut "a b" into other pieces than "a" and "b" (SentencePiece), so the sum
of the parts is only an estimate, and a window that does not fit loses pairs until it does.
`WindowRows` presents each window as one row of joined texts, so dealing, sharding, bucketing
and the caches downstream see ordinary rows.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from optical_jax.files.cache_files import sweep_temporaries, temporary, writing
from optical_jax.files.token_arrays import TOKENIZE_BATCH, ids_tokenizer, tokenize_flat

log = logging.getLogger("optical_jax")

WINDOWS_VERSION = 1  # bump when find_windows' windows change
_BLOCK = 1 << 16  # rows greedy_windows holds as Python numbers at once


def window_sizes(rows: int, pair_window: int, sizes: str = "fixed") -> np.ndarray | None:
  """How many pairs a window starting at each row aims for, int32 `[rows]`: None for "fixed"
  (`pair_window` everywhere); "uniform": drawn uniformly from 1..`pair_window` by a generator
  of fixed seed, row after row (every process holds every row, so all draw the same)."""
  if sizes == "fixed":
    return None
  if sizes != "uniform":
    raise ValueError(f"window sizes {sizes!r}: 'fixed' or 'uniform'")
  return np.random.default_rng(0).integers(1, pair_window + 1, rows, dtype=np.int32)


def greedy_windows(lengths: np.ndarray, overhead: Sequence[int], *, max_length: int,
                   pair_window: int, caps: dict[int, int] | None = None,
                   targets: np.ndarray | None = None) -> np.ndarray:
  """Window boundaries, int64 `[windows + 1]` (window w is rows `[starts[w], starts[w + 1])`).

  `lengths` `[rows, sides]`: each row's tokens on each side, prompt and special tokens
  included (`overhead[side]` of them: a joined window counts them once). The window starting
  at row i takes at most `caps.get(i, pair_window)` pairs (and `targets[i]`, `window_sizes`,
  where given), and the next pair only while its estimated sides (`overhead` plus the parts'
  other tokens) stay within `max_length`. One pass over the rows, a block of them at a time
  as Python numbers."""
  lengths = np.asarray(lengths, np.int64)
  overhead, caps = np.asarray(overhead, np.int64), caps or {}
  starts = array.array("q", [0])
  total, count, most = None, 0, 0
  for block in range(0, len(lengths), _BLOCK):
    part = lengths[block:block + _BLOCK]
    aims = (itertools.repeat(pair_window) if targets is None
            else targets[block:block + _BLOCK].tolist())
    for i, (row, content, aim) in enumerate(zip(part.tolist(), (part - overhead).tolist(),
                                                aims), block):
      if count:
        grown = [t + c for t, c in zip(total, content)]
        if count < most and max(grown) <= max_length:
          total, count = grown, count + 1
          continue
        starts.append(i)
      total, count, most = row, 1, min(aim, caps.get(i, pair_window))
  if count:
    starts.append(len(lengths))
  return np.frombuffer(starts, np.int64).copy()


def window_members(starts: np.ndarray, windows: np.ndarray) -> np.ndarray:
  """The rows of `windows` (sorted window indices), in order: int64 `[rows]`."""
  windows = np.asarray(windows, np.int64)
  first, counts = starts[windows], starts[windows + 1] - starts[windows]
  before = np.cumsum(counts) - counts
  return np.repeat(first - before, counts) + np.arange(int(counts.sum()), dtype=np.int64)


def joined(rows, starts: np.ndarray, windows: np.ndarray | None = None
           ) -> Iterator[tuple[str, ...]]:
  """The windows of `rows` (a `FileRows`/`ListRows`) at `windows` (sorted indices; None:
  all), each as one row: its pairs' texts joined with a space, side by side."""
  starts = np.asarray(starts, np.int64)
  counts = np.diff(starts)
  if windows is None:
    members = iter(rows.rows())
  else:
    windows = np.asarray(windows, np.int64)
    members, counts = iter(rows.rows(window_members(starts, windows))), counts[windows]
  for count in counts.tolist():
    group = list(itertools.islice(members, count))
    yield tuple(" ".join(side) for side in zip(*group))


def _chunks(items: Iterable, size: int = TOKENIZE_BATCH) -> Iterator[list]:
  items = iter(items)
  while chunk := list(itertools.islice(items, size)):
    yield chunk


def _lengths(tokenize, prompt: str, texts: Sequence[str]) -> np.ndarray:
  return np.diff(tokenize_flat(tokenize, [prompt + t for t in texts])[1])


def find_windows(rows, tokenizers: Sequence[Any], prompts: Sequence[str], *, max_length: int,
                 pair_window: int, sizes: str = "fixed", progress: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The windows of `rows` (module docstring): their boundaries, int64 `[windows + 1]`, and
  each one's longest joined text in characters, int32 `[windows]`.

  Column c of a row is tokenised by `tokenizers[c]` after `prompts[c]`, as training
  tokenises it. Every row is read and tokenised (its lengths kept: 20 bytes a row), then
  every joined window of two or more pairs is tokenised again; a window over `max_length` on
  a side is capped to one pair fewer and the windows after it found again, until all fit."""
  from tqdm.auto import tqdm
  short = [ids_tokenizer(t, max_length) for t in tokenizers]
  # One token over max_length tells a window that does not fit.
  long = [ids_tokenizer(t, max_length + 1) for t in tokenizers]
  overhead = [len(tokenize([prompt])[0]) for tokenize, prompt in zip(short, prompts)]
  lengths, chars = [], []
  most = f"1-{pair_window}" if sizes == "uniform" else pair_window
  with tqdm(total=len(rows), desc=f"windows of {most} pairs", unit=" rows", unit_scale=True,
            leave=False, disable=not progress) as bar:
    for chunk in _chunks(rows.rows()):
      sides = list(zip(*chunk))
      lengths.append(np.stack([_lengths(tokenize, prompt, side) for tokenize, prompt, side in
                               zip(short, prompts, sides)], axis=1).astype(np.int32))
      chars.append(np.array([list(map(len, side)) for side in sides], np.int32).T)
      bar.update(len(chunk))
  lengths, chars = np.concatenate(lengths), np.concatenate(chars)
  targets = window_sizes(len(lengths), pair_window, sizes)
  caps = {}  # start row -> most pairs, of windows found too long (few)
  checked = np.zeros(len(lengths), np.int32)  # start row -> pairs of the window checked there
  while True:
    starts = greedy_windows(lengths, overhead, max_length=max_length, pair_window=pair_window,
                            caps=caps, targets=targets)
    pairs = np.diff(starts)
    unchecked = np.flatnonzero((pairs > 1) & (checked[starts[:-1]] != pairs))
    over = []  # one read of the rows for all the windows to check
    texts = _chunks(joined(rows, starts, unchecked))
    for first in range(0, len(unchecked), TOKENIZE_BATCH):
      windows, sides = unchecked[first:first + TOKENIZE_BATCH], list(zip(*next(texts)))
      fits = np.all([_lengths(tokenize, prompt, side) <= max_length for tokenize, prompt, side
                     in zip(long, prompts, sides)], axis=0)
      over += windows[~fits].tolist()
    checked[starts[unchecked]] = pairs[unchecked]
    if not over:
      break
    caps.update((int(starts[w]), int(pairs[w]) - 1) for w in over)
  # A joined side has its parts' characters and a space between each two.
  sums = np.add.reduceat(chars, starts[:-1], axis=0) + (pairs - 1)[:, None]
  return starts, sums.max(axis=1).astype(np.int32)


class WindowRows:
  """`FileRows`' interface over the windows of `rows` (`find_windows`): row w is window w's
  pairs joined, side by side. `rows(keep)` streams the windows' pairs from `rows`."""

  def __init__(self, rows, starts: np.ndarray, longest_chars: np.ndarray):
    self.base, self.fields = rows, rows.fields
    self.starts = np.asarray(starts, np.int64)
    self._chars = np.asarray(longest_chars, np.int32)
    digest = hashlib.sha256(self.starts.tobytes()).hexdigest()
    self.fingerprint = json.dumps([rows.fingerprint, "windows", digest])

  def longest_chars(self) -> np.ndarray:
    return self._chars

  def __len__(self) -> int:
    return len(self._chars)

  def rows(self, keep: np.ndarray | None = None) -> Iterator[tuple[str, ...]]:
    return joined(self.base, self.starts, keep)


def window_rows(rows, tokenizers: Sequence[Any], prompts: Sequence[str], *, max_length: int,
                pair_window: int, sizes: str = "fixed", cache_dir: Path, key: str,
                progress: bool = False) -> WindowRows:
  """`WindowRows` of `find_windows(rows, ...)`, the windows cached in `cache_dir` under `key`
  (what decides them besides N and `max_length`: the rows, tokenizers and prompts), so a later
  run reads them instead of tokenising every row again."""
  key = json.dumps([key, max_length, pair_window, WINDOWS_VERSION]
                   + ([] if sizes == "fixed" else [sizes]))  # fixed windows' caches stay valid
  path = Path(cache_dir) / f"windows-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
  windows = _read_windows(rows, path, key)
  if windows is None:
    starts, chars = find_windows(rows, tokenizers, prompts, max_length=max_length,
                                 pair_window=pair_window, sizes=sizes, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    tmp = temporary(path)
    with writing(path, "windows cache", cleanup=[tmp]):
      with open(tmp, "wb") as f:  # a file object: np.savez adds no suffix to it
        np.savez(f, key=np.array(key), starts=starts, longest_chars=chars)
      os.replace(tmp, path)
    windows = WindowRows(rows, starts, chars)
  log.info("pair_window %d (%s): %d pairs in %d examples of at most %d tokens a side",
           pair_window, sizes, len(rows), len(windows), max_length)
  return windows


def _read_windows(rows, path: Path, key: str) -> WindowRows | None:
  """The windows `window_rows` stored at `path` under `key`; None when absent or broken."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as stored:
      if str(stored["key"]) == key and stored["starts"][-1] == len(rows):
        return WindowRows(rows, stored["starts"], stored["longest_chars"])
  except (ValueError, OSError, EOFError, KeyError):
    pass  # a killed write cannot leave one (renamed into place); a foreign file can
  return None
