"""The schema (optical_jax/config/schema.py) is the one declaration of a field: `base_config()`,
`validate`'s per-field checks, the optional groups `ciral` and `demo`, the fields a resumed run
may change and the losses' terms all come from it."""

import json
import re

import ml_collections
import pytest

from optical_jax.config import (GROUPS, LOSS_TABLE, PER_EXAMPLE_LOSSES, RECORDS, REVISIONS,
                                ConfigError, base_config, check_fields, declared_fields, defaults,
                                flat_fields, optional_group, validate)
from tests.helpers import ROOT, assert_accepted, load_config


def test_base_config_holds_every_group_but_the_optional_ones_at_the_schema_defaults():
  flat = flat_fields(base_config().to_dict())
  declared = {name: field.default for name, (group, field) in declared_fields().items()
              if not group.optional}
  assert json.dumps(flat, sort_keys=True) == json.dumps(declared, sort_keys=True)
  # In the schema's order (config.json lists them so).
  assert list(json.loads(base_config().to_json_best_effort(sort_keys=False))) == [
      "stage", "loss", "seed", *(g.name for g in GROUPS if g.name and not g.optional)]
  assert not {"ciral", "demo"} & set(base_config().keys())


def test_every_field_and_record_key_has_a_one_line_doc():
  declared = [(g.dotted(f), f) for g in GROUPS for f in g.fields] + [
      (f"{r.name}.{f.name}", f) for r in RECORDS for f in r.fields]
  undocumented = [name for name, f in declared if not f.doc.strip() or "\n" in f.doc]
  assert not undocumented
  assert {"ciral.language", "ciral.revision", "demo.losses", "demo.tables"} <= dict(declared).keys()


def test_a_field_of_several_types_keeps_taking_them():
  config = base_config()
  for value in (True, False, "auto"):
    config.data.teacher_cache = value  # a FieldReference of type object
    assert_accepted(validate, config)


def _ciral(**values):
  config = base_config()
  config.ciral = optional_group("ciral", **{"language": "somali", "split": "dev",
                                             "bitext": "pairs.tsv", **values})
  config.eval.dev_collection = "bitext-so-en"  # derived when the config resolves
  return config


def _demo(**values):
  config = load_config(ROOT / "configs" / "demo.py")
  for name, value in values.items():
    config.demo[name] = value
  return config


@pytest.mark.parametrize("config, message", [
    (lambda: _ciral(heldout_rate=0), "config.ciral.heldout_rate must be a positive integer, "
     "got 0"),
    (lambda: _ciral(max_chars=-1), "config.ciral.max_chars must be a non-negative integer, "
     "got -1"),
    (lambda: _ciral(language=""), "config.ciral.language must be a non-empty string, got ''"),
    (lambda: _ciral(revision="main"), "config.ciral.revision must be a commit hash (40 hex "
     "digits) of CIRAL/ciral, or '', got 'main'"),
    (lambda: _demo(losses=("ot", "kl")), "config.demo.losses must be a non-empty list or tuple, "
     "each item one of ('ot', 'mse', 'contrastive', 'ot+contrastive', 'maxsim', 'ot+maxsim'), "
     "got ('ot', 'kl')"),
    (lambda: _demo(losses=()), "config.demo.losses must be a non-empty list or tuple"),
    (lambda: _demo(seeds=(0, "1")), "config.demo.seeds must be a list or tuple, each item an "
     "integer, got (0, '1')"),
    (lambda: _demo(reference_collections=[dict(name="ref", topics="t", corpus="c", qrels="q",
                                               query_encoder="students",
                                               doc_encoder="teacher")]),
     "config.demo.reference_collections['ref'].query_encoder must be 'student' or 'teacher', "
     "got 'students'"),
    (lambda: _demo(reference_collections=[dict(name="ref", topics="t", corpus="c",
                                               query_encoder="teacher",
                                               doc_encoder="teacher")]),
     "config.demo.reference_collections['ref'].qrels is missing"),
    (lambda: _demo(tables=[dict(test="test-ny-en", title="")]),
     "config.demo.tables['test-ny-en'].title is missing"),
    # Across fields: a table's collections must exist, or the demo fails after training.
    (lambda: _demo(tables=[dict(test="test-xx", title="x")]), "config.demo.tables['test-xx']"
     ".test names no collection of config.eval.collections (dev-ny-en, dev-en-ny, "),
    (lambda: _demo(tables=[dict(test="test-ny-en", title="x", references=("test-en-xx",))]),
     "config.demo.tables['test-ny-en'].references: 'test-en-xx' names no collection of "
     "config.demo.reference_collections (test-en-en, "),
])
def test_a_bad_value_in_an_optional_group_is_refused(config, message):
  config = config()
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(config)


def test_the_shipped_optional_groups_are_valid():
  assert_accepted(validate, _ciral())
  assert_accepted(validate, _demo())


def test_an_optional_group_written_by_hand_must_have_every_field():
  config = base_config()
  config.ciral = ml_collections.ConfigDict(dict(language="somali", split="dev", bitext="x"))
  with pytest.raises(ConfigError, match=re.escape(
      "config.ciral.local_dir is missing: start the group from optional_group('ciral', ...)")):
    validate(config)


@pytest.mark.parametrize("values, message", [
    (dict(language="somali", split="dev"), "config.ciral.bitext has no default: give it"),
    (dict(language="somali", split="dev", bitext="x", heldout_rat=3),
     "config.ciral.heldout_rat is not a config field; did you mean config.ciral.heldout_rate?"),
])
def test_optional_group_refuses_a_missing_or_unknown_field(values, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    optional_group("ciral", **values)


@pytest.mark.parametrize("source", ["configs/mine.py", "--config"])
@pytest.mark.parametrize("field, value, message", [
    ("ciral", {"langauge": "somali"}, "config.ciral.langauge is not a config field; did you mean "
     "config.ciral.language?"),
    ("demo", {"seed": (0,)}, "config.demo.seed is not a config field; did you mean "
     "config.demo.seeds?"),
    ("dmeo", {"seeds": (0,)}, "config.dmeo is not a config group or field; did you mean "
     "config.demo?"),
])
def test_an_unknown_field_of_an_optional_group_is_refused_naming_its_source(source, field,
                                                                             value, message):
  config = base_config()
  config[field] = value
  with pytest.raises(ConfigError, match=re.escape(f"{source}: {message}")):
    check_fields(config, source)


def test_revision_fields_and_what_they_pin_come_from_the_schema():
  assert REVISIONS == {"model.teacher_revision": "model.teacher",
                       "model.student_revision": "model.student",
                       "data.hf_revision": "data.hf_dataset",
                       "ciral.revision": "ciral.local_dir",
                       "ciral.corpus_revision": "ciral.local_dir",
                       "ciral.bitext_revision": "ciral.bitext"}


def test_a_resumed_run_may_change_the_demo_group_but_not_the_ciral_inputs():
  from optical_jax.training.workdir import check_resumed_config
  saved = _demo()
  changed = _demo(seeds=(0, 1, 2), losses=("ot",))
  changed.runtime.progress_bar = False
  assert check_resumed_config(saved.to_json_best_effort(), changed) == []
  saved, changed = _ciral(), _ciral(heldout=10)
  with pytest.raises(ConfigError, match=re.escape("config.ciral.heldout: 1000 -> 10")):
    check_resumed_config(saved.to_json_best_effort(), changed)


def test_a_field_added_since_a_run_was_saved_counts_at_its_default_in_any_group():
  from optical_jax.training.workdir import check_resumed_config
  saved = json.loads(_ciral().to_json_best_effort())
  del saved["ciral"]["maxsim_depth"], saved["data"]["length_buckets"]
  assert check_resumed_config(json.dumps(saved), _ciral()) == []
  assert defaults()["ciral.maxsim_depth"] == 100 and "ciral.language" not in defaults()


def test_only_the_losses_declared_per_example_may_split_into_microbatches():
  assert PER_EXAMPLE_LOSSES == ("ot", "mse")
  for name, loss in LOSS_TABLE.items():
    config = base_config()
    config.loss, config.train.microbatch_size = name, 8
    if loss.per_example:
      validate(config)
    else:
      with pytest.raises(ConfigError, match="cannot split batches"):
        validate(config)
