"""The configuration: `base_config()`, the groups every config has, and `validate`, the one
place that checks a configuration and names its fields, both generated from the schema
(`optical_jax/config/schema.py`, each field declared once with its default, check and doc).
Files in `configs/` start from `base_config()` and change fields (`optional_group` adds the
`ciral` or `demo` group); `--config.GROUP.FIELD=VALUE` overrides one on the command line.

>>> c = base_config()
>>> c.ot.epsilon, "demo" in c
(0.05, False)
>>> c.demo = optional_group("demo", tables=[])
>>> c.demo.losses
('ot', 'mse', 'contrastive', 'ot+contrastive')
>>> c.demo.losses = ("ot", "kl")
>>> try:
...   validate(c)
... except ConfigError as e:
...   print(e)  # doctest: +ELLIPSIS
config.demo.losses must be a non-empty list or tuple, each item one of (...), got ('ot', 'kl')
"""

from __future__ import annotations

import copy

import ml_collections

from optical_jax.config.fields import REQUIRED, Field, Group, Record, closest
from optical_jax.config.schema import (ATTENTION, COLLECTION, COLLECTION_FIELDS, CPU_SCHEDULES,
                                       DEMO_TABLE, DTYPES, GROUPS, HOST_MEMORY, LOSS_TABLE,
                                       LOSSES, OT_COSTS, OT_GRADIENTS, PER_EXAMPLE_LOSSES,
                                       RECORDS, STAGES, VOCAB_INITS, Loss)

__all__ = [
    "ATTENTION", "COLLECTION", "COLLECTION_FIELDS", "CPU_SCHEDULES", "DEMO_TABLE", "DTYPES",
    "GROUPS", "HOST_MEMORY", "LOSSES", "LOSS_TABLE", "OT_COSTS", "OT_GRADIENTS",
    "PER_EXAMPLE_LOSSES", "RECORDS", "REQUIRED", "REVISIONS", "STAGES", "VOCAB_INITS",
    "ConfigError", "Field", "Group", "Loss", "Record", "base_config", "bible_collection",
    "check_fields", "check_revision", "check_values", "declared_fields", "defaults",
    "field_value", "flat_fields", "loss_terms", "microbatches_per_device", "optional_group",
    "recipe",
    "resumable_fields", "schema_fields", "unknown_field", "validate"]


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the field and what to do."""


def declared_fields() -> dict[str, tuple[Group, Field]]:
  """Every field of the schema by its dotted name ("ot.epsilon", "loss"), with its group."""
  return {group.dotted(field): (group, field) for group in GROUPS for field in group.fields}


# Hub inputs pinned to a commit: each revision field and the field naming what it pins.
REVISIONS = {name: field.check.pins for name, (_, field) in declared_fields().items()
             if field.check is not None and field.check.pins}


def loss_terms(loss: str) -> tuple[str, ...]:
  """The terms a `config.loss` adds up: "ot+contrastive" -> ("ot", "contrastive")."""
  return LOSS_TABLE[loss].terms


def _group_config(group: Group, values: dict, c=None) -> ml_collections.ConfigDict:
  """`c` (default: a new ConfigDict) with `group`'s fields at `values`, else their defaults."""
  c = ml_collections.ConfigDict() if c is None else c
  for field in group.fields:
    value = values.get(field.name, field.default)
    if value is REQUIRED:
      raise ConfigError(f"config.{group.dotted(field)} has no default: give it ({field.doc})")
    value = copy.deepcopy(value)  # no list shared between configs
    c[field.name] = (ml_collections.FieldReference(value, field_type=object)
                     if field.any_type else value)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every group that is not optional, each field at its default."""
  c = ml_collections.ConfigDict()
  for group in GROUPS:
    if group.optional:
      continue
    if group.name:
      c[group.name] = _group_config(group, {})
    else:
      _group_config(group, {}, c)  # the top level's fields
  return c


def optional_group(name: str, **values) -> ml_collections.ConfigDict:
  """The optional group `name` ("ciral", "demo") with `values`, its other fields at their
  defaults: `config.demo = optional_group("demo", tables=[...])`."""
  group = next((g for g in GROUPS if g.name == name and g.optional), None)
  if group is None:
    raise ConfigError(f"{name!r} is no optional config group (those: "
                      f"{', '.join(g.name for g in GROUPS if g.optional)})")
  unknown = set(values) - {f.name for f in group.fields}
  if unknown:
    field = sorted(unknown)[0]
    raise ConfigError(f"config.{name}.{field} is not a config field"
                      f"{closest(field, [f.name for f in group.fields], f'config.{name}.')}")
  return _group_config(group, values)


def defaults() -> dict:
  """`{"group.field": default}` of every field, the optional groups' included (those without a
  default: absent)."""
  return {name: field.default for name, (_, field) in declared_fields().items()
          if not field.required}


def resumable_fields() -> tuple[str, ...]:
  """The dotted fields a resumed run may change freely (a whole group's as "group."): they do
  not change what is trained."""
  return tuple([f"{g.name}." for g in GROUPS if g.resumable] + [
      g.dotted(f) for g in GROUPS if not g.resumable for f in g.fields if f.resumable])


def recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with the recipe proven on the English–Chichewa demo (configs/demo.py,
  docs/experiments.md), for a student initialised from a WordPiece teacher: a vocabulary
  built for the language, only the embeddings trained, at a larger constant rate, with the
  centred OT cost. configs/demo.py and configs/pair.py start from it. Returns `c`."""
  c.model.dropout = 0.0
  # Centred cosine cost: without it the OT student first drifts towards the teacher's shared
  # direction and loses dev MAP early on.
  c.ot.center = True
  # A student built for the language: 4000 WordPiece pieces learned from the bitext's student
  # side, their embeddings initialised from OT plans of 4000 pairs against the teacher (ny→en
  # dev MAP 0.59 against 0.30 for the mean of old pieces and 0.24 without, 2000 pieces, loss
  # ot, one seed), and so are the old pieces the language still uses ("ot_plan_all"; loss ot:
  # ny→en dev MaxSim MAP higher in 3 of 3 seeds). The OT loss weighs tokens by idf, as the
  # plans do. 4000 pieces and idf together were chosen in CIRAL's direction over three seeds,
  # loss ot: en→ny dev MAP 0.522 against 2000 pieces with uniform marginals' 0.510 (higher in
  # 3 of 3), ny→en dev 0.486 against 0.464 (docs/experiments.md, "A dev collection on the
  # test's scale"); idf steps are cheaper, as Sinkhorn converges sooner.
  c.model.vocab_extension = 4000
  c.data.alignment_pairs = 4000
  c.model.vocab_init = "ot_plan_all"
  c.ot.marginals = "idf"
  # Only the embeddings train (the new pieces' rows with them); the layers stay the teacher's.
  # Steps take two thirds of the time, and every demo row reads a higher ny→en dev MAP in each
  # of 3 seeds than with every parameter trained at 3e-4; loss ot in CIRAL's direction too
  # (en→ny dev 0.522 against 0.463 at equal steps, 3 of 3). The embeddings alone take the
  # larger rate; a decay to 10% is lower in 3 of 3 seeds in both directions.
  c.train.trainable = "embeddings"
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.final_lr_fraction = 1.0  # constant after warm-up: decay only slows a short run
  c.contrastive.temperature = 0.1  # chosen on the demo's ny→en dev MAP, one seed
  return c


def bible_collection(name: str, split: str, direction: str, student_side: str,
                     **extra) -> ml_collections.ConfigDict:
  """A collection of the offline Bible build: `split` is test or dev, or its context
  collection (test/context, dev/context: `optical_jax.data.bible`); `direction` is ny-en,
  en-ny or en-en."""
  query_lang, doc_lang = direction.split("-")
  student_encodes = {"query": query_lang == "ny", "document": doc_lang == "ny"}
  spec = dict(
      name=name, topics=f"bible:{split}/queries.{query_lang}.tsv",
      corpus=f"bible:{split}/passages.{doc_lang}.tsv", qrels=f"bible:{split}/qrels.txt",
      query_encoder="student" if student_encodes["query"] and student_side == "query"
      else "teacher",
      doc_encoder="student" if student_encodes["document"] and student_side == "document"
      else "teacher")
  return ml_collections.ConfigDict({**spec, **extra})  # extra fields may override them


def flat_fields(tree: dict, prefix: str = "") -> dict:
  """`{"group.field": value}` of a nested dict (a config's `to_dict()` or its JSON)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def field_value(config, field: str, default=None):
  """`config`'s value of a dotted `field`, `default` where a group or the field is absent."""
  for key in field.split("."):
    if not hasattr(config, "get") or key not in config:
      return default
    config = config[key]
  return config


def schema_fields() -> set[str]:
  """Every field a config may have, dotted, the optional groups' included."""
  return set(declared_fields())


def unknown_field(field: str, source: str, valid: set[str] | None = None) -> ConfigError | None:
  """The error for a dotted `field` the schema does not have (None if it has it), naming
  `source` (a config file, or the command-line override) and the closest valid name: the one
  message of a misspelt field, wherever it was written."""
  valid = schema_fields() if valid is None else valid
  if field in valid:
    return None
  head, heads = field.split(".")[0], {f.split(".")[0] for f in valid}
  if head not in heads:  # a misspelt group: name the group, not each of its fields
    what = f"config.{head} is not a config group or field{closest(head, heads, 'config.')}"
  else:
    what = f"config.{field} is not a config field{closest(field, valid, 'config.')}"
  return ConfigError(f"{source}: {what} (fields and their defaults: docs/configuration.md)")


def _unknown_key(spec, record: Record, where: str, source: str) -> ConfigError | None:
  spec = spec.to_dict() if hasattr(spec, "to_dict") else spec
  for name in (spec if isinstance(spec, dict) else {}):
    if name not in record.names:
      return ConfigError(f"{source}: {where} has no field {name!r}{closest(name, record.names)} "
                         f"(a {record.name}'s fields: {', '.join(record.names)})")
  return None


def check_fields(config, source: str = "the config") -> None:
  """Raises `ConfigError` naming the first field of `config` (or key of a dict in one of its
  lists of collections or demo tables) that the schema does not have, with `source` (the
  config file) and the closest valid name. A misspelt field would otherwise be a new field,
  silently ignored."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  valid = schema_fields()
  for field in flat_fields(tree):
    error = unknown_field(field, source, valid)
    if error:
      raise error
  for name, (_, field) in declared_fields().items():
    record = getattr(field.check, "record", None)
    specs = field_value(tree, name)
    for i, spec in enumerate(specs if record and isinstance(specs, (list, tuple)) else []):
      error = _unknown_key(spec, record, f"config.{name}[{record.label(spec, i)!r}]", source)
      if error:
        raise error


def check_revision(value, field: str) -> None:
  """Raises `ConfigError` unless `value` is "" or a full commit hash (`field`: a `REVISIONS`
  key)."""
  problem = declared_fields()[field][1].check.problem(value, field)
  if problem:
    raise ConfigError(problem)


def microbatches_per_device(config, per_device_batch: int) -> int:
  """How many chunks the step splits each device's batch into."""
  size = config.train.microbatch_size
  splits = isinstance(size, int) and 0 < size < per_device_batch
  if not isinstance(size, int) or isinstance(size, bool) or size < 0 or (
      splits and per_device_batch % size):
    raise ConfigError(f"config.train.microbatch_size must be 0 (off) or a positive integer that "
                      f"divides the per-device batch {per_device_batch}, got {size!r}")
  return per_device_batch // size if splits else 1


def check_values(config, *, only: tuple[str, ...] | None = None) -> None:
  """Each field's own check, in the schema's order: every group `config` has (an optional
  group only when present; of the groups named in `only`, when given) must have all its
  fields, each as its check says."""
  for group in GROUPS:
    if only is not None and group.name not in only:
      continue
    if group.name and group.name not in config:
      if group.optional:
        continue
      raise ConfigError(f"config.{group.name} is missing: start from base_config()")
    section = config[group.name] if group.name else config
    for field in group.fields:
      name = group.dotted(field)
      if field.name not in section:
        raise ConfigError(f"config.{name} is missing: start the group from "
                          + (f"optional_group({group.name!r}, ...)" if group.optional
                             else "base_config()"))
      problem = field.value_check.problem(section[field.name], name)
      if problem:
        raise ConfigError(problem)


def validate(config, *, devices: int = 1, backend: str = "cpu") -> None:
  """Raises `ConfigError` naming the first field of `config` that cannot run on `devices`
  devices of platform `backend` ("cpu", "gpu", "tpu": the platform of the devices the run
  uses, `jax.devices()[0].platform`); changes nothing. Each field's own check comes from the
  schema; what follows are the checks across fields."""
  check_fields(config)
  check_values(config)
  if config.model.attention == "cudnn" and (backend != "gpu"
                                            or config.model.dtype != "bfloat16"):
    raise ConfigError("config.model.attention 'cudnn' needs an NVIDIA GPU and "
                      f"config.model.dtype 'bfloat16' (here: {backend} devices, "
                      f"{config.model.dtype!r}); use 'xla'")
  if config.stage == "teacher" and (config.model.vocab_extension
                                    or config.data.code_switch_rate):
    raise ConfigError("config.model.vocab_extension and config.data.code_switch_rate adapt a "
                      "student to its language from bitext: the distill stage only; set them to "
                      "0 in the teacher stage")
  if config.ot.gradient == "implicit" and (config.ot.tau_student, config.ot.tau_teacher) != (1, 1):
    raise ConfigError("config.ot.gradient 'implicit' is for balanced OT: set ot.tau_student "
                      "and ot.tau_teacher to 1, or ot.gradient to 'stop_gradient'")
  if config.stage == "teacher" and config.data.pair_window != 1:
    raise ConfigError("config.data.pair_window joins bitext pairs: the distill stage only; set "
                      "it to 1 in the teacher stage")
  t = config.train
  if t.batch_size % devices:
    raise ConfigError(f"config.train.batch_size {t.batch_size} is not divisible by the "
                      f"{devices} devices")
  microbatches = microbatches_per_device(config, t.batch_size // devices)
  # In-batch negatives and the batch's mean teacher token would change with the split.
  if microbatches > 1 and (config.stage == "teacher" or config.loss not in PER_EXAMPLE_LOSSES
                           or (config.ot.center and "ot" in loss_terms(config.loss))):
    raise ConfigError("config.train.microbatch_size cannot split batches for the contrastive "
                      "and MaxSim losses, the teacher stage and ot.center: their per-example loss "
                      "depends on the whole batch")
  names = [spec["name"] for spec in config.eval.collections]
  # A CIRAL config's collections are derived from its ciral group when it resolves
  # (optical_jax.data.inputs), which checks the name then.
  if config.eval.dev_collection and config.eval.dev_collection not in names and (
      "ciral" not in config):
    raise ConfigError(f"config.eval.dev_collection {config.eval.dev_collection!r} names no "
                      f"collection of config.eval.collections ({', '.join(names) or 'none'})")
  if "demo" in config:
    _check_demo_tables(config, names)


def _check_demo_tables(config, names: list[str]) -> None:
  """Each demo table's collections exist: a misspelt name would surface only after training."""
  references = [spec["name"] for spec in config.demo.reference_collections]
  for table in config.demo.tables:
    if table["test"] not in names:
      raise ConfigError(f"config.demo.tables[{table['test']!r}].test names no collection of "
                        f"config.eval.collections ({', '.join(names) or 'none'})")
    for name in table.get("references", ()):
      if name not in references:
        raise ConfigError(f"config.demo.tables[{table['test']!r}].references: {name!r} names "
                          "no collection of config.demo.reference_collections "
                          f"({', '.join(references) or 'none'})")
