"""The levers from a config: the code-switching hook of the input pipeline, cached lexicon."""

import pytest

from optical_jax.adaptation import pipeline
from optical_jax.config import ConfigError, base_config, validate
from tests.adaptation.bitext import PAIRS


@pytest.fixture
def config(tiny_bert_dir, tmp_path):
  train = tmp_path / "train.tsv"
  train.write_text("".join(f"{s}\t{e}\n" for s, e in PAIRS), encoding="utf-8")
  c = base_config()
  c.model.teacher = str(tiny_bert_dir)
  c.data.train_file = str(train)
  c.data.alignment_pairs = 16
  c.data.max_length = 32
  c.runtime.cache_dir = str(tmp_path / "cache")
  return c


def test_code_switching_is_off_by_default(config):
  rows = pipeline.bitext_rows(config)
  assert rows == [tuple(p) for p in PAIRS]
  assert pipeline.code_switch_rows(config, rows) is rows
  assert not pipeline._cache_dir(config).exists()  # nothing computed


@pytest.mark.slow
def test_code_switching_uses_a_cached_lexicon_and_is_deterministic(config, tmp_path):
  config.data.code_switch_rate = 0.5
  validate(config)
  rows = pipeline.bitext_rows(config)
  switched = pipeline.code_switch_rows(config, rows)
  assert switched == pipeline.code_switch_rows(config, rows)  # second time: from the cache
  assert len(list(pipeline._cache_dir(config).glob("lexicon-*.json"))) == 1
  changed = sum(a != b for a, b in zip(rows, switched))
  assert 0 < changed <= len(rows) // 2
  assert [b for _, b in switched] == [b for _, b in rows]
  # The training loop's rows are the code-switched ones.
  from optical_jax.training.input_pipeline import training_rows
  assert list(training_rows(config).rows()) == switched
  lexicon, counts = pipeline.lexicon_for(config, rows)
  assert lexicon and all(counts[w] >= 5 for w in lexicon)
  path = pipeline.write_lexicon_sample(config, tmp_path / "sample.md", rows=5)
  assert path.read_text().count("\n| ") == 6  # header row + 5 words


def test_the_levers_belong_to_the_distill_stage(config):
  config.stage = "teacher"
  config.data.code_switch_rate = 0.1
  with pytest.raises(ConfigError, match="distill stage"):
    validate(config)
