"""`validate`: every field a run cannot use is refused, naming it, before anything is
written."""

import re

import pytest

from optical_jax.config import (ConfigError, base_config, check_fields, optional_group,
                                validate)
from tests.helpers import assert_accepted


def _with(**fields):
  config = base_config()
  for field, value in fields.items():
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def test_the_base_config_is_valid():
  assert_accepted(validate, base_config())


@pytest.mark.parametrize("fields, message", [
    ({"train.microbatch_size": 3}, "config.train.microbatch_size must be 0 (off) or a positive "
     "integer that divides the per-device batch 32, got 3"),
    ({"train.microbatch_size": 8, "loss": "ot+contrastive"},
     "config.train.microbatch_size cannot split batches for the contrastive and MaxSim losses"),
    ({"train.microbatch_size": 8, "loss": "ot+maxsim"},
     "config.train.microbatch_size cannot split batches for the contrastive and MaxSim losses"),
    ({"maxsim.temperature": 0.0}, "config.maxsim.temperature must be a positive finite number"),
    ({"train.microbatch_size": 8, "ot.center": True},
     "config.train.microbatch_size cannot split batches for the contrastive and MaxSim losses, "
     "the teacher stage and ot.center"),
    ({"model.attention": "flash"}, "config.model.attention must be one of ('xla', 'cudnn'), got "
     "'flash'"),
    ({"model.attention": "cudnn"}, "config.model.attention 'cudnn' needs an NVIDIA GPU and "
     "config.model.dtype 'bfloat16'"),
    ({"data.length_buckets": (64, 32)}, "config.data.length_buckets must be ascending positive "
     "integers, got (64, 32)"),
    ({"runtime.xla_cpu_schedule": "fastest"}, "config.runtime.xla_cpu_schedule must be one of "
     "('memory', 'default'), got 'fastest'"),
    ({"runtime.host_memory": "keep"}, "config.runtime.host_memory must be one of ('retain', "
     "'release'), got 'keep'"),
    ({"loss": "kl"}, "config.loss must be one of ('ot', 'mse', 'contrastive', "
     "'ot+contrastive', 'maxsim', 'ot+maxsim'), got 'kl'"),
    ({"train.learning_rate": -1e-4}, "config.train.learning_rate must be a positive finite "
     "number, got -0.0001"),
    ({"data.limit": -5}, "config.data.limit must be a non-negative integer, got -5"),
    ({"data.pair_window": 0}, "config.data.pair_window must be a positive integer, got 0"),
    ({"stage": "teacher", "data.pair_window": 3}, "config.data.pair_window joins bitext pairs: "
     "the distill stage only"),
    ({"ot.epsilon": float("inf")}, "config.ot.epsilon must be a positive finite number, got inf"),
    ({"ot.epsilon": 0.0}, "config.ot.epsilon must be a positive finite number, got 0.0"),
    ({"ot.tau_teacher": 0.0}, "config.ot.tau_teacher must be in (0, 1] (1: balanced OT), got 0.0"),
    ({"ot.tau_student": 0.9, "ot.gradient": "implicit"}, "config.ot.gradient 'implicit' is for "
     "balanced OT"),
    ({"contrastive.weight": -1.0}, "config.contrastive.weight must be a non-negative finite "
     "number"),
    ({"train.num_train_steps": 0}, "config.train.num_train_steps must be a positive integer, "
     "got 0"),
    ({"eval.dev_collection": "dev"}, "config.eval.dev_collection 'dev' names no collection of "
     "config.eval.collections (none)"),
    ({"train.batch_size": 30}, "config.train.batch_size 30 is not divisible by the 4 devices"),
])
def test_unusable_fields_are_named(fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(_with(**fields), devices=4 if "train.batch_size" in fields else 1)


def test_a_collection_with_an_unknown_encoder_is_named():
  config = base_config()
  config.eval.collections = [dict(name="toy", topics="t", corpus="c", qrels="q",
                                  query_encoder="students", doc_encoder="teacher")]
  with pytest.raises(ConfigError, match=re.escape(
      "config.eval.collections['toy'].query_encoder must be 'student' or 'teacher', got "
      "'students'")):
    validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("train.num_steps", 60, "configs/mine.py: config.train.num_steps is not a config field; did "
     "you mean config.train.num_train_steps?"),
    ("eval.dev_colection", "dev", "configs/mine.py: config.eval.dev_colection is not a config "
     "field; did you mean config.eval.dev_collection?"),
    ("trian", {"num_train_steps": 60}, "configs/mine.py: config.trian is not a config group or "
     "field; did you mean config.train?"),
    ("ciral", {"langauge": "somali"}, "configs/mine.py: config.ciral.langauge is not a config "
     "field; did you mean config.ciral.language?"),
])
def test_a_misspelt_field_is_refused_naming_the_file_and_the_closest_name(field, value,
                                                                         message):
  config = base_config()
  group, _, name = field.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(ConfigError, match=re.escape(message)) as raised:
    check_fields(config, "configs/mine.py")
  assert "\n" not in str(raised.value)
  with pytest.raises(ConfigError, match=re.escape(message.split(": ", 1)[1])):
    validate(config)  # the API's own check names the same field


@pytest.mark.parametrize("collections", ["eval.collections", "demo.reference_collections"])
def test_a_misspelt_collection_key_is_refused(collections):
  config = base_config()
  spec = dict(name="dev", topics="t", corpus="c", qrels="q", query_encoder="student",
              doc_encoder="teacher", maxsim_dept=100)
  group, _, name = collections.partition(".")
  if group not in config:
    config[group] = optional_group(group)
  config[group][name] = [spec]
  with pytest.raises(ConfigError, match=re.escape(
      f"configs/mine.py: config.{collections}['dev'] has no field 'maxsim_dept'; did you mean "
      "maxsim_depth? (a collection's fields: name, topics, ")):
    check_fields(config, "configs/mine.py")


def test_a_misspelt_demo_table_key_is_refused():
  config = base_config()
  config.demo = optional_group("demo", tables=[dict(test="t", titel="x")])
  with pytest.raises(ConfigError, match=re.escape(
      "configs/mine.py: config.demo.tables['t'] has no field 'titel'; did you mean title? (a demo "
      "table's fields: test, references, title)")):
    check_fields(config, "configs/mine.py")


@pytest.mark.parametrize("name", ["demo", "tiny", "so", "ciral", "pair"])
def test_every_shipped_config_has_only_schema_fields(name):
  from tests.helpers import ROOT, load_config
  assert_accepted(check_fields, load_config(ROOT / "configs" / f"{name}.py"), name)
