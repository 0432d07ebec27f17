"""From a config to training batches: the rows of its bitext (or triples) dealt to one shard
per row of the global batch; each process tokenises (once, cached on disk) and feeds only the
shards of its devices, and the processes exchange the rows' lengths so that all compute the same
length-bucketed global batches (`optical_jax.data.batching`), whatever the devices."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from optical_jax.adaptation.pipeline import code_switch_rows
from optical_jax.config import ConfigError
from optical_jax.data import bitext
from optical_jax.data.batching import BucketedBatches, longest, shard_rows, tokenize_cached
from optical_jax.data.idf import document_frequencies, idf_table
from optical_jax.data.teacher_cache import TeacherTokenCache


def load_training_rows(config) -> list[tuple[str, ...]]:
  """The training rows (`bitext.configured_rows`), code-switched per
  `config.data.code_switch_rate`."""
  return code_switch_rows(config, bitext.configured_rows(config))


def process_shards(mesh, batch_size: int) -> list[int]:
  """This process's shards, in mesh order: a run has one shard per row of the global batch
  (`batch_size`, whatever the devices), and the device at mesh position d feeds the rows of
  shards `[d * per_device, (d + 1) * per_device)`."""
  import jax
  devices = list(mesh.devices.flat)
  per_device = batch_size // len(devices)
  return [d * per_device + i for d, device in enumerate(devices)
          if device.process_index == jax.process_index() for i in range(per_device)]


def dealing_order(rows: Sequence[tuple[str, ...]]) -> np.ndarray:
  """int `[rows]`: the rows by their longest text in characters (ties in file order), the order
  in which they are dealt to shards (`shard_rows`): every shard then gets nearly the same mix
  of lengths, so few rows wait for a wider bucket (`epoch_schedule`). Characters, because
  each process knows them for every row without tokenising it."""
  return np.argsort([max(map(len, row)) for row in rows], kind="stable")


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


def make_batches(config, models, rows, cache_dir: Path, *, shards: Sequence[int] | None = None,
                 gather=gather_lengths) -> BucketedBatches:
  """Length-bucketed global batches of `rows` (all rows, as `load_training_rows` gives them) in
  `config.train.batch_size` shards (`process_shards`), of which this process tokenises, by the
  encoders of `models` (`DistillationModels`), and keeps only `shards` (default: all); its
  tokens are cached in `cache_dir`. `gather(lengths by shard, examples, shards)` exchanges the
  rows' lengths between processes (`gather_lengths`)."""
  if config.stage == "teacher":
    names = ("query", "positive", "negative")[:len(rows[0])]
    tokenizers = {name: models.student for name in names}
    roles = {"query": "query", "positive": "passage", "negative": "passage"}
  else:
    names = ("student", "teacher")
    tokenizers = {"student": models.student, "teacher": models.teacher}
    # Both sides of a pair play the part the student plays at retrieval.
    role = "passage" if config.model.student_side == "document" else "query"
    roles = {"student": role, "teacher": role}
  num_shards = config.train.batch_size  # one per batch row: the same batches on any devices
  shards = list(range(num_shards)) if shards is None else list(shards)
  order = dealing_order(rows)
  by_shard = [order[shard_rows(len(rows), s, num_shards)] for s in shards]
  mine = np.concatenate(by_shard)
  columns, pad_ids = {}, {}
  for col, name in enumerate(names):
    encoder = tokenizers[name]
    prompt = getattr(encoder, "prompts", {}).get(roles[name], "")  # e5: "query: "
    columns[name] = tokenize_cached(
        encoder.tokenizer, [prompt + rows[i][col] for i in mine],
        max_length=config.data.max_length, cache_dir=cache_dir, tag=f"{encoder.path}:{name}")
    pad_ids[name] = encoder.config.pad_token_id
  ends = np.cumsum([len(r) for r in by_shard])
  local = dict(zip(shards, np.split(longest(columns), ends[:-1])))
  try:
    return BucketedBatches(columns, pad_ids, batch_size=config.train.batch_size,
                           max_length=config.data.max_length, seed=config.seed,
                           length_buckets=config.data.length_buckets,
                           lengths=gather(local, len(rows), num_shards),
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


def make_teacher_cache(config, models, batches: BucketedBatches) -> TeacherTokenCache | None:
  """The frozen teacher's token embeddings of this process's rows (`batches.columns`, its
  shards only), cached on disk (distill stage with `config.data.teacher_cache`) and looked up
  by position there (`local_batch`): one cache per process."""
  if config.stage != "distill" or not config.data.teacher_cache:
    return None
  import jax
  directory = Path(config.runtime.cache_dir) / "teacher_tokens"
  # The cache's key hashes the rows' tokens, but two processes whose shards hold the same text
  # must still not write one cache at once.
  if jax.process_count() > 1:
    directory = directory / f"process-{jax.process_index()}-of-{jax.process_count()}"
  return TeacherTokenCache(models.teacher, batches.columns["teacher"], directory)
