"""From a config to training batches: the rows of its bitext (or triples), tokenised once, in
length-bucketed batches; each process feeds its own rows of every global batch."""

from __future__ import annotations

from pathlib import Path

from optical_jax.config import ConfigError
from optical_jax.data import bitext
from optical_jax.data.batching import BucketedBatches, tokenize_cached
from optical_jax.data.teacher_cache import TeacherTokenCache
from optical_jax.textfiles import DataFormatError


def load_training_rows(config) -> list[tuple[str, ...]]:
  """The training rows: (student, teacher) pairs, or (query, positive[, negative]) triples in
  the teacher stage; at most `config.data.limit` (0: all)."""
  fields = (("query", "positive", "negative") if config.stage == "teacher"
            else ("student", "teacher"))
  d = config.data
  if d.train_file:
    path = Path(d.train_file).expanduser()
    if not path.is_file():
      raise ConfigError(f"config.data.train_file: {path} does not exist. "
                        f"{d.get('how_to_get', '')}".rstrip())
    if config.stage == "teacher":
      try:
        rows = bitext.read_pairs(path, fields)
      except DataFormatError:
        rows = bitext.read_pairs(path, fields[:2])
    else:
      rows = bitext.read_pairs(path, (d.student_field, d.teacher_field))
  elif d.hf_dataset:
    names = (d.student_field, d.teacher_field) if config.stage != "teacher" else fields
    rows = bitext.read_hf_dataset(d.hf_dataset, names, config=d.hf_config, split=d.hf_split,
                                  limit=d.limit)
  else:
    raise ConfigError("config.data: set train_file (TSV/JSONL) or hf_dataset")
  return rows[:d.limit] if d.limit else rows


def make_batches(config, models, rows, cache_dir: Path) -> BucketedBatches:
  """Length-bucketed global batches of `rows`, tokenised by the encoders of `models`
  (`DistillationModels`) and cached in `cache_dir`."""
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
  columns, pad_ids = {}, {}
  for col, name in enumerate(names):
    encoder = tokenizers[name]
    prompt = getattr(encoder, "prompts", {}).get(roles[name], "")  # e5: "query: "
    columns[name] = tokenize_cached(
        encoder.tokenizer, [prompt + r[col] for r in rows], max_length=config.data.max_length,
        cache_dir=cache_dir, tag=f"{encoder.path}:{name}")
    pad_ids[name] = encoder.config.pad_token_id
  try:
    return BucketedBatches(columns, pad_ids, batch_size=config.train.batch_size,
                           max_length=config.data.max_length, seed=config.seed,
                           length_buckets=config.data.length_buckets)
  except ValueError as e:
    raise ConfigError(f"config.train.batch_size: {e}") from None


def make_teacher_cache(config, models, batches: BucketedBatches) -> TeacherTokenCache | None:
  """The frozen teacher's token embeddings of the bitext, cached on disk (distill stage with
  `config.data.teacher_cache`); one cache per process of a multi-process run, each holding
  only the rows that process feeds."""
  if config.stage != "distill" or not config.data.teacher_cache:
    return None
  import jax
  directory = Path(config.runtime.cache_dir) / "teacher_tokens"
  if jax.process_count() > 1:
    directory = directory / f"process-{jax.process_index()}-of-{jax.process_count()}"
  return TeacherTokenCache(models.teacher, batches.columns["teacher"], directory)
