"""A student with an extended vocabulary: training prepares it from the config's bitext into
the workdir (prepare_student), build_models loads it from there, and the exported student
carries its tokenizer and grown embeddings into transformers and back into load_encoder."""

import jax
import numpy as np
import pytest

from optical_jax.config import ConfigError, base_config
from optical_jax.models.export import export_student
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.models.student import build_models
from optical_jax.training.student_init import prepare_student
from tests.adaptation.bitext import PAIRS
from tests.helpers import torch_last_hidden

pytestmark = pytest.mark.slow  # every test here runs over ~5 s

NEW = 12


@pytest.fixture(scope="module")
def extended_models(tiny_bert_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("vocab")
  train = root / "train.tsv"
  train.write_text("".join(f"{s}\t{e}\n" for s, e in PAIRS), encoding="utf-8")
  config = base_config()
  config.model.teacher = str(tiny_bert_dir)
  config.model.vocab_extension = NEW
  config.model.vocab_init = "ot_plan"
  config.data.train_file = str(train)
  config.data.alignment_pairs = 16
  config.data.max_length = 32
  config.runtime.cache_dir = str(root / "cache")
  with pytest.raises(ConfigError, match="prepared by training into WORKDIR/student_init"):
    build_models(config)  # loads paths only: it never builds a student
  prepared = prepare_student(config, root / "work")
  assert prepared.model.student_init == str(root / "work" / "student_init")
  return prepared, build_models(prepared)


def test_build_models_gives_the_student_the_new_pieces(extended_models, tiny_bert_dir):
  config, models = extended_models
  base = load_encoder(tiny_bert_dir)
  assert models.student.config.vocab_size == base.config.vocab_size + NEW
  assert len(models.student.tokenizer) == base.config.vocab_size + NEW
  assert models.teacher.config.vocab_size == base.config.vocab_size  # the teacher is as it was
  text = [PAIRS[0][0]]
  assert (models.student.tokenize(text)["attention_mask"].sum()
          < base.tokenize(text)["attention_mask"].sum())
  assert models.student.path != base.path
  again = build_models(config)  # the prepared directory, not a new vocabulary
  assert again.student.path == models.student.path


def test_the_exported_student_loads_in_transformers_and_load_encoder(extended_models, tmp_path):
  from transformers import AutoModel, AutoTokenizer
  _, models = extended_models
  # "trained" parameters: the student's own, shifted, so the export must write these
  params = {"encoder": jax.tree_util.tree_map(lambda x: x + 0.01, models.student.params)}
  directory = export_student(models, params, tmp_path / "export")
  tokenizer = AutoTokenizer.from_pretrained(str(directory))
  vocab_size = models.student.config.vocab_size
  assert len(tokenizer) == vocab_size
  text = [PAIRS[1][0], PAIRS[2][0]]
  batch = tokenizer(text, padding=True, return_tensors="np")
  assert batch["input_ids"].max() >= vocab_size - NEW  # new pieces in use
  assert AutoModel.from_pretrained(str(directory)).embeddings.word_embeddings.weight.shape[0] \
      == vocab_size
  loaded = load_encoder(directory)
  assert loaded.config.vocab_size == vocab_size
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  ours = np.asarray(loaded.apply(loaded.params, ids, mask))
  trained = np.asarray(models.student.apply(params["encoder"], ids, mask))
  np.testing.assert_allclose(ours, trained, atol=1e-5)
  reference = torch_last_hidden(directory, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-4)
  np.testing.assert_array_equal(loaded.tokenize(text)["input_ids"], ids)
