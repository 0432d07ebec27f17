"""The exported student is exactly the evaluated one, and an export never replaces a model a
configuration loads from (`optical_jax.models.export`)."""

import json
import re
import shutil

import jax
import numpy as np
import pytest

from optical_jax.evaluation.retrieval import TextEncoder
from optical_jax.models.export import MARKER, ExportError, export_student
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.models.student import DistillationModels
from optical_jax.runtime.mesh import data_mesh

TEXTS = ["Yesu analira.", "And God said, Let there be light.",
         "Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi."]


def trained(tiny_bert_dir, tmp_path):
  """Teacher and student of one tiny checkpoint (a copy: the export must never touch it), and
  student parameters that differ from the checkpoint's, as training leaves them."""
  source = shutil.copytree(tiny_bert_dir, tmp_path / "teacher")
  encoder = load_encoder(source)
  models = DistillationModels(teacher=encoder, student=encoder)
  rng = np.random.default_rng(0)
  params = {"encoder": jax.tree_util.tree_map(
      lambda x: np.asarray(x) + 0.02 * rng.standard_normal(np.shape(x)).astype(np.float32),
      encoder.params)}
  return models, params


def stale_sentence_transformers_model(directory):
  """What another sentence-transformers model leaves: CLS pooling, Normalize, prompts."""
  directory.mkdir(parents=True)
  (directory / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize",
       "type": "sentence_transformers.models.Normalize"}]))
  (directory / "1_Pooling").mkdir()
  (directory / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
       "pooling_mode_mean_tokens": False}))
  (directory / "2_Normalize").mkdir()
  (directory / "config_sentence_transformers.json").write_text(json.dumps(
      {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}))
  (directory / "README.md").write_text("another model\n")
  return directory


def test_an_export_over_an_earlier_export_is_exactly_ours(tiny_bert_dir, tmp_path):
  from sentence_transformers import SentenceTransformer
  models, params = trained(tiny_bert_dir, tmp_path)
  target = tmp_path / "export"
  export_student(models, {"encoder": models.student.params}, target, source={"step": 1})
  export_student(models, params, target, overwrite=True, source={"step": 2})
  marker = json.loads((target / MARKER).read_text())
  assert marker["source"] == {"step": 2}
  assert set(marker["files"]) == {p.relative_to(target).as_posix()
                                  for p in target.rglob("*")} - {MARKER}
  ours = TextEncoder(models.student, data_mesh(), max_length=64).bind(
      params["encoder"]).encode(TEXTS, progress=False)
  theirs = SentenceTransformer(str(target), device="cpu").encode(TEXTS, convert_to_numpy=True)
  np.testing.assert_allclose(theirs, ours, atol=1e-5)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "teacher"]  # nothing aside


def _files(directory):
  return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("teacher_files", ["none", "sentence-transformers"])
def test_sentence_transformers_scores_equal_the_runs_at_eval_max_length(tiny_bert_dir, tmp_path,
                                                                         teacher_files):
  """The export keeps evaluation's length: sentence-transformers truncates at the run's
  eval.max_length, not at its default (the model's position limit)."""
  from sentence_transformers import SentenceTransformer
  models, params = trained(tiny_bert_dir, tmp_path)
  if teacher_files == "sentence-transformers":  # CLS pooling, Normalize, a query prompt
    modules = stale_sentence_transformers_model(tmp_path / "st")
    for name in ("modules.json", "1_Pooling/config.json"):
      (models.student.path / name).parent.mkdir(exist_ok=True)
      shutil.copy(modules / name, models.student.path / name)
    (models.student.path / "2_Normalize").mkdir()
    (models.student.path / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}}))
    models = DistillationModels(*(load_encoder(models.student.path),) * 2)
  eval_max_length = 8
  export_student(models, params, tmp_path / "export", max_length=eval_max_length)
  model = SentenceTransformer(str(tmp_path / "export"), device="cpu")
  assert model.max_seq_length == eval_max_length
  run = lambda length: TextEncoder(models.student, data_mesh(), max_length=length).bind(
      params["encoder"]).encode(TEXTS, progress=False)
  ours, theirs = run(eval_max_length), model.encode(TEXTS, convert_to_numpy=True)
  np.testing.assert_allclose(theirs, ours, atol=1e-5)
  assert np.abs(run(64) - ours).max() > 1e-4  # the length matters for these texts
  queries = model.encode(TEXTS, prompt_name="query", convert_to_numpy=True) if (
      teacher_files != "none") else theirs
  prompted = TextEncoder(models.student, data_mesh(), max_length=eval_max_length).bind(
      params["encoder"]).encode([models.student.prompts["query"] + t for t in TEXTS],
                                progress=False)
  np.testing.assert_allclose(queries, prompted, atol=1e-5)  # and the prompts are the run's


def test_a_non_empty_directory_needs_overwrite_and_is_left_as_it_was(tiny_bert_dir, tmp_path):
  models, params = trained(tiny_bert_dir, tmp_path)
  target = stale_sentence_transformers_model(tmp_path / "export")
  before = _files(target)
  with pytest.raises(ExportError, match=r"export: not empty \(5 entries: 1_Pooling, 2_Normalize, "
                                        r"README.md, config_sentence_transformers.json, \.\.\.\); "
                                        "pass --overwrite"):
    export_student(models, params, target)
  assert _files(target) == before


def test_overwrite_refuses_what_is_not_an_earlier_export_and_keeps_its_files(tiny_bert_dir,
                                                                              tmp_path):
  models, params = trained(tiny_bert_dir, tmp_path)
  other = stale_sentence_transformers_model(tmp_path / "other")  # another model
  earlier = tmp_path / "earlier"
  export_student(models, params, earlier)
  (earlier / "notes.txt").write_text("mine")  # a user's file in an earlier export
  forged = tmp_path / "forged"
  shutil.copytree(other, forged)
  (forged / MARKER).symlink_to(earlier / MARKER)  # a marker that is a link counts for nothing
  cases = {other: r"holds no earlier export of optical_jax \(no \.optical_jax_export\.json\)",
           earlier: r"holds what no export wrote \(notes.txt\)",
           forged: "holds no earlier export of optical_jax"}
  for target, said in cases.items():
    before = _files(target)
    with pytest.raises(ExportError, match=said) as caught:
      export_student(models, params, target, overwrite=True)
    assert "\n" not in str(caught.value) and "its files are kept" in str(caught.value)
    assert _files(target) == before


def test_overwrite_never_deletes_through_a_link(tiny_bert_dir, tmp_path):
  models, params = trained(tiny_bert_dir, tmp_path)
  earlier = tmp_path / "earlier"
  export_student(models, params, earlier)
  before = _files(earlier)
  link = tmp_path / "link"
  link.symlink_to(earlier, target_is_directory=True)
  with pytest.raises(ExportError, match=re.escape(
      f"link: is a link to {earlier}; --overwrite replaces a directory named directly, never "
      "through a link")):
    export_student(models, params, link, overwrite=True)
  assert _files(earlier) == before and link.is_symlink()


@pytest.mark.parametrize("where", ["teacher", "parent", "inside"])
def test_the_directory_a_model_loads_from_is_never_a_target(tiny_bert_dir, tmp_path, where):
  models, params = trained(tiny_bert_dir, tmp_path)
  teacher = models.teacher.path
  target = {"teacher": teacher, "parent": tmp_path, "inside": teacher / "hf"}[where]
  weights = (teacher / "model.safetensors").read_bytes()
  relation = {"teacher": "is", "parent": "holds", "inside": "is inside"}[where]
  with pytest.raises(ExportError, match=rf": {relation} the teacher's checkpoint, "
                                        rf"{teacher.resolve()}, which an export must never "
                                        "replace"):
    export_student(models, params, target, overwrite=True)
  assert (teacher / "model.safetensors").read_bytes() == weights
  assert not (teacher / "hf").exists()


def test_a_failed_export_leaves_the_target_and_no_temporary(tiny_bert_dir, tmp_path,
                                                            monkeypatch):
  models, params = trained(tiny_bert_dir, tmp_path)
  target = tmp_path / "export"
  export_student(models, params, target)
  before = _files(target)
  from optical_jax.models import export

  def full_disk(encoder, directory, params=None):
    (directory / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
    (directory / "model.safetensors").write_bytes(b"half")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(export, "save_encoder", full_disk)
  with pytest.raises(OSError, match="No space left"):
    export_student(models, params, target, overwrite=True)
  assert _files(target) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "teacher"]
