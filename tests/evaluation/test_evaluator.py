"""The evaluation objects take the model: an `Evaluator` is given the student's parameters per
call and shares nothing between calls but its compiled programs; a `TextEncoder` runs on the
mesh it is given (the run's), never on one of its own."""

import gc
import weakref

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

from optical_jax.config import base_config
from optical_jax.evaluation import TextEncoder
from optical_jax.evaluation import collections
from optical_jax.evaluation.collections import Evaluator
from optical_jax.evaluation.io import write_qrels, write_tsv
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.models.student import DistillationModels
from optical_jax.runtime.mesh import AXIS
from optical_jax.runtime.mesh import data_mesh
from tests.evaluation.test_retrieval import passages


@pytest.fixture(scope="module")
def setting(tiny_bert_dir, tmp_path_factory):
  """A teacher-as-student pair, a config caching embeddings, and a collection whose queries
  the student encodes (pooled and, for MaxSim, tokens) against the teacher's passages."""
  tmp = tmp_path_factory.mktemp("evaluator")
  encoder = load_encoder(tiny_bert_dir)
  corpus = passages(30)
  topics = {f"q{i}": " ".join(text.split()[:5]) for i, text in enumerate(corpus.values())
            if i < 6}
  write_tsv(corpus, tmp / "corpus.tsv")
  write_tsv(topics, tmp / "topics.tsv")
  write_qrels({q: {d: 1} for q, d in zip(topics, corpus)}, tmp / "qrels.txt")
  config = base_config()
  config.runtime.cache_dir = str(tmp / "cache")
  config.eval.batch_size, config.eval.k = 4, 10
  spec = ml_collections.ConfigDict(dict(
      name="toy", topics=str(tmp / "topics.tsv"), corpus=str(tmp / "corpus.tsv"),
      qrels=str(tmp / "qrels.txt"), query_encoder="student", doc_encoder="teacher",
      maxsim_depth=5))
  return DistillationModels(teacher=encoder, student=encoder), config, spec


def _same(x, y) -> bool:
  return (x.values == y.values and x.run == y.run and x.per_query == y.per_query
          and x.maxsim.run == y.maxsim.run)


@pytest.mark.slow
def test_each_call_evaluates_its_own_parameters_and_changes_nothing_shared(setting):
  models, config, spec = setting
  params_a = {"encoder": models.student.params}
  params_b = {"encoder": jax.tree_util.tree_map(lambda x: x * 1.5, models.student.params)}
  evaluator = Evaluator(models, config)
  first = evaluator.evaluate(spec, params_a)
  other = evaluator.evaluate(spec, params_b)
  again = evaluator.evaluate(spec, params_a)
  assert not _same(first, other)  # b's scores, not a's (nor a's cached embeddings)
  assert _same(first, again)
  # b's result is b's however the evaluator was used before: a fresh one, b alone.
  assert _same(Evaluator(models, config).evaluate(spec, params_b, cache=False), other)
  # The shared encoders hold no parameters; the teacher's are the model's own.
  assert not any(hasattr(e, "params") for e in evaluator.encoders.values())
  assert evaluator.teacher.params is models.teacher.params
  # Evaluators of the same models share their compiled programs (the demo's runs), and
  # still each evaluates the parameters it is given (above).
  fresh = Evaluator(models, config)
  for side in ("teacher", "student"):
    assert fresh.encoders[side].programs is evaluator.encoders[side].programs
  assert fresh.encoders["teacher"].programs is not fresh.encoders["student"].programs


@pytest.mark.slow
def test_programs_kept_for_later_runs_keep_no_weights_alive(setting, tiny_bert_dir,
                                                            monkeypatch):
  from optical_jax.evaluation import retrieval
  monkeypatch.setattr(retrieval, "_SHARED_PROGRAMS", {})  # this run compiles them
  models, config, spec = setting
  first = load_encoder(tiny_bert_dir)  # a demo's first run: its own teacher and student
  evaluator = Evaluator(DistillationModels(teacher=first, student=first), config)
  evaluator.evaluate(spec, {"encoder": first.params}, cache=False)
  programs = {side: e.programs for side, e in evaluator.encoders.items()}
  alive = weakref.ref(first)
  del first, evaluator
  gc.collect()
  assert alive() is None  # its weights went with it...
  later = Evaluator(models, config)  # ...and a later run still gets its programs
  assert all(later.encoders[side].programs is p for side, p in programs.items())


@pytest.mark.slow
def test_maxsim_on_a_small_corpus_encodes_each_passage_once(setting, monkeypatch):
  """The student on the passage side: its dense pass keeps the tokens MaxSim reranks with,
  the teacher's query tokens are encoded once per process, and the result is the one of
  encoding them again."""
  models, config, spec = setting
  spec = ml_collections.ConfigDict({**spec.to_dict(), "query_encoder": "teacher",
                                    "doc_encoder": "student"})
  params = {"encoder": jax.tree_util.tree_map(lambda x: x * 1.1, models.student.params)}
  evaluator = Evaluator(models, config)
  sides = evaluator.sides(params, cache=False)
  once = collections.evaluate_collection(spec, sides, k=config.eval.k)
  assert sides["student"].encoded_rows == 30  # the corpus, once
  # A later student (the demo's next run) meets the same English queries: the teacher's
  # query tokens are kept for the process.
  fresh = Evaluator(models, config)
  assert collections.evaluate_collection(spec, fresh.sides(params, cache=False),
                                         k=config.eval.k).maxsim.run == once.maxsim.run
  assert fresh.teacher.encoded_rows == 0
  monkeypatch.setattr(collections, "SMALL_CORPUS_BYTES", 0)  # too large to keep: encode again
  sides = evaluator.sides(params, cache=False)
  queries_before = sides["teacher"].encoded_rows
  twice = collections.evaluate_collection(spec, sides, k=config.eval.k)
  assert sides["student"].encoded_rows > 30
  assert sides["teacher"].encoded_rows == queries_before + 6  # the 6 queries, again
  for a, b in ((once.run, twice.run), (once.maxsim.run, twice.maxsim.run)):
    assert a.keys() == b.keys()
    for q in a:
      assert sorted(a[q], key=a[q].get) == sorted(b[q], key=b[q].get)
      np.testing.assert_allclose([a[q][d] for d in b[q]], list(b[q].values()), rtol=1e-5,
                                 atol=1e-6)


def test_the_evaluator_runs_on_the_mesh_it_is_given(setting):
  models, config, spec = setting
  mesh = data_mesh()
  evaluator = Evaluator(models, config, mesh=mesh)
  sides = evaluator.sides({"encoder": models.student.params}, cache=False)
  for name, encoder in evaluator.encoders.items():
    assert encoder.mesh is mesh and encoder.local_mesh == mesh.local_mesh, name
  for leaf in jax.tree_util.tree_leaves(sides["student"].device_params):
    assert leaf.sharding.mesh == mesh.local_mesh and leaf.sharding.is_fully_replicated
  # Given none, a mesh of this process's devices on the run's one axis name.
  assert Evaluator(models, config).encoders["student"].mesh.axis_names == (AXIS,)


@pytest.mark.slow
def test_an_encoder_runs_on_the_mesh_it_is_given_whatever_its_axis_name(setting):
  models, _, _ = setting
  texts = list(passages(9, seed=2).values())
  reference = TextEncoder(models.teacher, data_mesh(), batch_size=4).bind()
  mesh = Mesh(np.asarray(jax.devices()[-1:]), ("rows",))
  encoder = TextEncoder(models.teacher, mesh, batch_size=4)
  bound = encoder.bind()
  assert encoder.local_mesh == mesh
  for leaf in jax.tree_util.tree_leaves(bound.device_params):
    assert leaf.sharding.mesh == mesh
  np.testing.assert_array_equal(bound.encode(texts, progress=False),
                                reference.encode(texts, progress=False))
  assert bound.encoded_rows == len(texts)
