"""From a config to training batches: the rows of its bitext (or triples) dealt to one shard
per row of the global batch; each process tokenises (once, cached on disk) and feeds only the
shards of its devices, and the processes exchange the rows' lengths so that all compute the same
length-bucketed global batches (`optical_jax.data.batching`), whatever the devices."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from optical_jax.adaptation.pipeline import code_switch_rows
from optical_jax.config import ConfigError
from optical_jax.data import bitext
from optical_jax.data.batching import BucketedBatches, longest, shard_rows
from optical_jax.data.idf import document_frequencies, idf_table
from optical_jax.data.inputs import configured_rows, training_source
from optical_jax.data.teacher_cache import TeacherTokenCache, expected_bytes, storage_dtype
from optical_jax.data.windows import WindowRows, window_rows
from optical_jax.files.cache_files import sweep_temporaries
from optical_jax.files.fingerprint import TOKENIZER_FILES, checkpoint_digest
from optical_jax.files.layout import CacheDir
from optical_jax.files.token_arrays import ColumnWriter, TokenColumn, open_column

log = logging.getLogger("optical_jax")


def training_rows(config) -> bitext.FileRows | bitext.ListRows:
  """The training rows of a resolved config (`inputs.training_source`: a file streamed, a hub
  dataset in memory), code-switched per `data.code_switch_rate` (in memory)."""
  if config.stage == "distill" and config.data.get("code_switch_rate", 0.0):
    return bitext.ListRows(code_switch_rows(config, configured_rows(config)))
  return training_source(config)


def check_student_language(config, rows, sample: int = 1000) -> None:
  """Warns, with the numbers, when the bitext's student column looks like the teacher's
  language (swapped columns, untranslated copies): before a vocabulary is learnt from it."""
  if config.stage != "distill":
    return
  from transformers import AutoTokenizer
  from optical_jax.models.hf_checkpoint import resolve_checkpoint_dir
  vocabulary = AutoTokenizer.from_pretrained(
      str(resolve_checkpoint_dir(config.model.teacher))).get_vocab()
  warning = bitext.student_language_warning(itertools.islice(rows.rows(), sample), vocabulary)
  if warning:
    log.warning("%s: %s", config.data.train_file or config.data.hf_dataset, warning)


def process_shards(mesh, batch_size: int) -> list[int]:
  """This process's shards, in mesh order: a run has one shard per row of the global batch
  (`batch_size`, whatever the devices), and the device at mesh position d feeds the rows of
  shards `[d * per_device, (d + 1) * per_device)`."""
  import jax
  devices = list(mesh.devices.flat)
  per_device = batch_size // len(devices)
  return [d * per_device + i for d, device in enumerate(devices)
          if device.process_index == jax.process_index() for i in range(per_device)]


def dealing_order(longest_chars: np.ndarray) -> np.ndarray:
  """int `[rows]`: the rows by their longest text in characters (`longest_chars`, ties in file
  order), the order in which they are dealt to shards (`shard_rows`): every shard then gets
  nearly the same mix of lengths, so few rows wait for a wider bucket (`epoch_schedule`).
  Characters, because each process knows them for every row without tokenising it."""
  return np.argsort(np.asarray(longest_chars), kind="stable")


def gather_lengths(local: Mapping[int, np.ndarray], num_examples: int,
                   num_shards: int) -> np.ndarray:
  """Every row's length, int32 `[num_examples]`, from each process's `local` (shard -> its
  rows' lengths, `[len(shard_rows(...))]`): one all-gather of a `[local shards, 1 + rows per
  shard]` int32 block per process (shard id, then lengths), the same result on every process."""
  import jax
  width = -(-num_examples // num_shards)  # the largest shard's rows
  block = np.full((len(local), 1 + width), -1, np.int32)
  for slot, (shard, lengths) in enumerate(sorted(local.items())):
    block[slot, 0], block[slot, 1:1 + len(lengths)] = shard, lengths
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    block = np.asarray(multihost_utils.process_allgather(block)).reshape(-1, 1 + width)
  if sorted(block[:, 0].tolist()) != list(range(num_shards)):
    raise RuntimeError(f"the processes' shards {sorted(block[:, 0].tolist())} are not each of "
                       f"the {num_shards} shards once")
  out = np.empty(num_examples, np.int32)
  for row in block:
    rows = shard_rows(num_examples, int(row[0]), num_shards)
    out[rows] = row[1:1 + len(rows)]
  return out


def tokenizer_digest(encoder, cache_dir: Path) -> str:
  """What decides `encoder`'s token ids: its tokenizer files' digest."""
  return checkpoint_digest(encoder.path, files=TOKENIZER_FILES, memo_dir=cache_dir)


def windowed_rows(config, rows, tokenizers: Mapping[str, Any], prompts: Mapping[str, str], *,
                  cache_dir: Path, progress: bool = True):
  """`rows` as training examples of up to `config.data.pair_window` consecutive pairs joined
  (`data.windows.WindowRows`); `rows` themselves for a window of 1. The windows depend on
  every row, so each process tokenises every row's two sides once (lengths only, cached in
  `cache_dir`), not only its shards'."""
  if config.data.pair_window == 1:
    return rows
  key = json.dumps([rows.fingerprint, *(tokenizer_digest(e, cache_dir)
                                        for e in tokenizers.values()), *prompts.values()])
  return window_rows(rows, [e.tokenizer for e in tokenizers.values()], list(prompts.values()),
                     max_length=config.data.max_length, pair_window=config.data.pair_window,
                     sizes=config.data.pair_window_sizes, cache_dir=cache_dir, key=key,
                     progress=progress)


def tokenized_columns(rows, positions: np.ndarray, tokenizers: Mapping[str, Any],
                      prompts: Mapping[str, str], *, max_length: int, cache_dir: Path,
                      progress: bool = True) -> dict[str, TokenColumn]:
  """Token ids of the rows at `positions` (of `rows`, a `FileRows`/`ListRows`; column c of a
  row goes to the c-th name of `tokenizers`), in that order, as `TokenColumn`s stored in
  `cache_dir` in file order and memory-mapped: a later run with the same rows, tokenizer,
  prompt and length reads them instead of tokenising. Text is streamed a chunk at a time."""
  stored = np.unique(np.asarray(positions, np.int64))
  order = np.searchsorted(stored, positions)
  selection = hashlib.sha256(stored.tobytes()).hexdigest()
  paths, keys = {}, {}
  for name, encoder in tokenizers.items():
    keys[name] = json.dumps([rows.fingerprint, name, tokenizer_digest(encoder, cache_dir),
                             prompts[name], max_length, selection])
    paths[name] = cache_dir / f"tokens-{hashlib.sha256(keys[name].encode()).hexdigest()[:24]}"
  columns = {name: open_column(paths[name], order=order, fingerprint=keys[name])
             for name in tokenizers}
  missing = [name for name, column in columns.items() if column is None]
  if missing:
    sweep_temporaries(cache_dir)  # columns a killed run did not finish
    from tqdm.auto import tqdm
    names = list(tokenizers)
    writers = {name: ColumnWriter(paths[name], tokenizers[name].tokenizer, max_length=max_length,
                                  vocab_size=tokenizers[name].config.vocab_size)
               for name in missing}
    with tqdm(total=len(stored), desc=f"tokenising {', '.join(missing)}", unit=" rows",
              unit_scale=True, leave=False, disable=not progress) as bar:
      chunk = []
      for row in itertools.chain(rows.rows(stored), [None]):
        if row is not None:
          chunk.append(row)
        if len(chunk) == ColumnWriter.CHUNK or (row is None and chunk):
          for name in missing:
            column, prompt = names.index(name), prompts[name]
            writers[name].add([prompt + r[column] for r in chunk])
          bar.update(len(chunk))
          chunk = []
    for name in missing:
      writers[name].finish(expected=len(stored))
      columns[name] = open_column(paths[name], order=order, fingerprint=keys[name])
  return columns


def make_batches(config, models, rows, cache_dir: Path, *, shards: Sequence[int] | None = None,
                 gather=gather_lengths) -> BucketedBatches:
  """Length-bucketed global batches of `rows` (all rows, as `training_rows` gives them, or a
  list of row tuples) in
  `config.train.batch_size` shards (`process_shards`), of which this process tokenises, by the
  encoders of `models` (`DistillationModels`), and keeps only `shards` (default: all), as flat
  token arrays cached in `cache_dir` (`tokenized_columns`). `gather(lengths by shard,
  examples, shards)` exchanges the rows' lengths between processes (`gather_lengths`)."""
  import jax
  if not isinstance(rows, (bitext.FileRows, bitext.ListRows, WindowRows)):  # rows in a list
    rows = bitext.ListRows(rows)
  if config.stage == "teacher":
    names = ("query", "positive", "negative")[:len(rows.fields)]
    tokenizers = {name: models.student for name in names}
    roles = {"query": "query", "positive": "passage", "negative": "passage"}
  else:
    names = ("student", "teacher")
    tokenizers = {"student": models.student, "teacher": models.teacher}
    # Both sides of a pair play the part the student plays at retrieval.
    role = "passage" if config.model.student_side == "document" else "query"
    roles = {"student": role, "teacher": role}
  # Each side's checkpoint may declare a prefix ("query: ") its texts are encoded with.
  prompts = {name: getattr(encoder, "prompts", {}).get(roles[name], "")
             for name, encoder in tokenizers.items()}
  progress = bool(config.runtime.progress_bar) and jax.process_index() == 0
  if config.stage != "teacher":
    rows = windowed_rows(config, rows, tokenizers, prompts, cache_dir=Path(cache_dir),
                         progress=progress)
  num_shards = config.train.batch_size  # one per batch row: the same batches on any devices
  shards = list(range(num_shards)) if shards is None else list(shards)
  num_examples = len(rows)
  order = dealing_order(rows.longest_chars())
  by_shard = [order[shard_rows(num_examples, s, num_shards)] for s in shards]
  columns = tokenized_columns(
      rows, np.concatenate(by_shard), tokenizers, prompts, max_length=config.data.max_length,
      cache_dir=Path(cache_dir), progress=progress)
  pad_ids = {name: encoder.config.pad_token_id for name, encoder in tokenizers.items()}
  ends = np.cumsum([len(r) for r in by_shard])
  local = dict(zip(shards, np.split(longest(columns), ends[:-1])))
  try:
    return BucketedBatches(columns, pad_ids, batch_size=config.train.batch_size,
                           max_length=config.data.max_length, seed=config.seed,
                           length_buckets=config.data.length_buckets,
                           lengths=gather(local, num_examples, num_shards),
                           num_shards=num_shards, shards=shards)
  except ValueError as e:
    raise ConfigError(f"config.train.batch_size: {e}") from None


def local_batch(batches: BucketedBatches, teacher_cache: TeacherTokenCache | None,
                step: int, weights: Mapping[str, np.ndarray] | None = None
                ) -> dict[str, np.ndarray]:
  """This process's rows of global batch `step` (`BucketedBatches.batch`), with their teacher
  token embeddings `teacher_tokens` `[rows, width, hidden]` when `teacher_cache` is given and
  each side's token weights `{side}_weights` `[rows, width]` when `weights` (`token_weights`)
  is; one schedule look-up."""
  positions, width = batches.local_rows(step)
  batch = batches.pad(positions, width)
  if teacher_cache is not None:
    batch["teacher_tokens"] = teacher_cache.lookup(positions, batch["teacher_ids"],
                                                   batch["teacher_mask"])
  for side, table in (weights or {}).items():
    batch[f"{side}_weights"] = table[batch[f"{side}_ids"]] * batch[f"{side}_mask"]
  return batch


def sum_over_processes(counts: np.ndarray) -> np.ndarray:
  """The sum of every process's int32 `counts` (one all-gather), the same on each."""
  import jax
  if jax.process_count() == 1:
    return counts
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, *counts.shape).sum(0)


def token_weights(config, models, batches: BucketedBatches, *, sum_counts=sum_over_processes
                  ) -> dict[str, np.ndarray] | None:
  """Per side (student, teacher), float32 `[vocab]`: the idf of each token id over all the
  training rows, for `config.ot.marginals` "idf" (each process counts the rows of its shards,
  `sum_counts` adds the counts up); None for uniform marginals."""
  if config.stage != "distill" or config.ot.marginals != "idf":
    return None
  tables = {}
  for side, encoder in (("student", models.student), ("teacher", models.teacher)):
    df = document_frequencies(batches.columns[side], encoder.config.vocab_size)
    tables[side] = idf_table(sum_counts(df.astype(np.int32)), batches.num_examples)
  return tables


def _decimal_bytes(size: float) -> str:
  """`size` bytes in kB, MB, GB or TB (powers of 1000, as config.data.teacher_cache_max_gb)."""
  for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if size >= scale:
      return f"{size / scale:.3g} {unit}"
  return f"{int(size)} bytes"


def uses_teacher_cache(config, backend: str) -> bool:
  """Whether the run reads the teacher's token vectors from disk (`config.data.teacher_cache`:
  "auto" is on for the CPU backend only; on accelerators the teacher's forward inside the
  step is cheaper than reading and shipping its vectors)."""
  setting = config.data.teacher_cache
  if config.stage != "distill" or setting is False:
    return False
  return backend == "cpu" if setting == "auto" else True


def make_teacher_cache(config, models, batches: BucketedBatches, *, backend: str
                       ) -> TeacherTokenCache | None:
  """The frozen teacher's token embeddings of this process's rows (`batches.columns`, its
  shards only), cached on disk in the compute dtype and looked up by position there
  (`local_batch`): one cache per process, when `uses_teacher_cache`. Its size is logged
  first; a cache larger than `config.data.teacher_cache_max_gb` or than the free disk is a
  `ConfigError`, before any training."""
  if not uses_teacher_cache(config, backend):
    return None
  import shutil
  import jax
  directory = CacheDir(config.runtime.cache_dir).teacher_tokens
  # The cache's key hashes the rows' tokens, but two processes whose shards hold the same text
  # must still not write one cache at once.
  if jax.process_count() > 1:
    directory = directory / f"process-{jax.process_index()}-of-{jax.process_count()}"
  column = batches.columns["teacher"]
  size = expected_bytes(models.teacher, column)
  tokens = int(column.lengths.sum())
  described = (f"{_decimal_bytes(size)} ({tokens:,} tokens x {models.teacher.config.hidden_size} x "
               f"{storage_dtype(models.teacher).itemsize} bytes, {storage_dtype(models.teacher)})")
  limit = float(config.data.teacher_cache_max_gb) * 1e9
  fix = ("raise config.data.teacher_cache_max_gb or set config.data.teacher_cache=False (the "
         "teacher then runs inside the train step)")
  if size > limit:
    raise ConfigError(f"the teacher token cache would take {described}, more than "
                      f"config.data.teacher_cache_max_gb={config.data.teacher_cache_max_gb}; "
                      f"{fix}")
  cache = TeacherTokenCache.location(models.teacher, column, directory)
  if not (cache / "tokens.npy").is_file():
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if size > free:
      raise ConfigError(f"the teacher token cache would take {described}, more than the "
                        f"{_decimal_bytes(free)} free on {existing} "
                        f"(config.data.teacher_cache={config.data.teacher_cache!r}, "
                        f"config.data.teacher_cache_max_gb="
                        f"{config.data.teacher_cache_max_gb}); free space, set "
                        f"config.runtime.cache_dir elsewhere, or {fix.split(' or ')[1]}")
  log.info("teacher token cache: %s in %s", described, cache)
  return TeacherTokenCache(models.teacher, column, directory)
