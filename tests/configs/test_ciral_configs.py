"""The CIRAL language configs: one builder for four languages, command-line overrides reaching
the asset references, and configs/so.py's whole path (hub layout through
config.ciral.local_dir, parquet bitext, tiny local models) to the final table."""

import ast
import copy
import json
import re

import pytest

from optical_jax import runtime
from optical_jax.config import ConfigError, validate
from optical_jax.data import ciral
from tests.helpers import ROOT, load_config, save_tiny_bert
from tests.training.runs import run_train

HUB = ROOT / "tests" / "fixtures" / "ciral" / "hub"
CONFIGS = {"so": "somali", "sw": "swahili", "ha": "hausa", "yo": "yoruba"}


# What differs between the languages, written out here rather than read from the builder:
# the bitext's source, its files there, and its student and teacher columns.
BITEXTS = {
    "so": ("quickmt/quickmt-train.so-en", "data/train-*.parquet", "so", "en"),
    "sw": ("sentence-transformers/parallel-sentences-ccmatrix", "en-sw/train-*.parquet",
           "non_english", "english"),
    "ha": ("sentence-transformers/parallel-sentences-ccmatrix", "en-ha/train-*.parquet",
           "non_english", "english"),
    "yo": ("Helsinki-NLP/opus-100", "en-yo/*train*.parquet", "translation.yo",
           "translation.en"),
}


def _builder():
  """`ciral_config`, imported from where configs/so.py imports it."""
  import importlib
  tree = ast.parse((ROOT / "configs" / "so.py").read_text())
  module = next(node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                and any(alias.name == "ciral_config" for alias in node.names))
  return importlib.import_module(module).ciral_config


def _returned_call(path) -> str:
  """`get_config`'s body in `path`, one statement, as source ("return f(...)")."""
  tree = ast.parse(path.read_text())
  get_config = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "get_config")
  assert [a.arg for a in get_config.args.args] == ["splits"]
  assert len(get_config.body) == 1, ast.unparse(get_config)
  return ast.unparse(get_config.body[0])


def _leaves(value) -> list:
  """The values of a config's fields, its collections' included."""
  if hasattr(value, "items"):  # a dict or ConfigDict
    return [leaf for v in value.values() for leaf in _leaves(v)]
  if isinstance(value, (list, tuple)):
    return [leaf for v in value for leaf in _leaves(v)]
  return [value]


@pytest.mark.parametrize("code, language", CONFIGS.items())
def test_each_language_config_is_the_builder_called_with_its_own_language(code, language):
  path = ROOT / "configs" / f"{code}.py"
  assert _returned_call(path) == f"return ciral_config({language!r}, splits)"
  c = load_config(path)
  validate(c)
  builder = _builder()
  assert c.to_dict() == builder(language).to_dict()
  for other in set(CONFIGS.values()) - {language}:  # the comparison tells languages apart
    assert c.to_dict() != builder(other).to_dict()


@pytest.mark.parametrize("code, language", CONFIGS.items())
def test_each_language_config_names_its_collections_and_bitext(code, language):
  c = load_config(ROOT / "configs" / f"{code}.py")
  assert (c.model.teacher, c.model.student) == ("BAAI/bge-small-en-v1.5",
                                                 "intfloat/multilingual-e5-small")
  names = [spec.name for spec in c.eval.collections]
  assert names == [f"bitext-{code}-en", f"ciral-{code}-dev", f"ciral-{code}-test-a",
                   f"ciral-{code}-test-b"]
  assert c.eval.dev_collection == f"bitext-{code}-en"
  for spec in c.eval.collections[1:]:
    assert (spec.query_encoder, spec.doc_encoder) == ("teacher", "student")
  source, files, student_field, teacher_field = BITEXTS[code]
  leaves = _leaves(c.to_dict())
  assert source in leaves and files in leaves
  assert not {BITEXTS[other][1] for other in CONFIGS if other != code} & set(leaves)
  assert (c.data.student_field, c.data.teacher_field) == (student_field, teacher_field)


def test_overrides_after_loading_reach_every_reference(tmp_path):
  c = load_config(ROOT / "configs" / "so.py")
  c.ciral.local_dir = str(HUB)  # as --config.ciral.local_dir=... sets it
  c.ciral.bitext = str(tmp_path / "my pairs.parquet")
  c.data.limit = 123
  assert c.eval.collections[1].qrels.endswith(f"&local_dir={HUB}")
  assert c.eval.collections[3].corpus == f"ciral:somali/corpus?local_dir={HUB}"
  for reference in (c.data.train_file, c.eval.collections[0].topics):
    assert "&limit=123&" in reference and reference.endswith(f"&source={tmp_path}/my pairs.parquet")
  c.data.train_file = "/elsewhere/train.tsv"  # a plain path replaces the reference
  assert c.data.train_file == "/elsewhere/train.tsv"
  assert json.loads(c.to_json_best_effort())["eval"]["collections"][1]["qrels"].endswith(str(HUB))


def test_splits_are_chosen_when_the_config_loads():
  import importlib.util  # config_flags passes the SPLITS of --config=FILE:SPLITS to get_config
  spec = importlib.util.spec_from_file_location("so", ROOT / "configs" / "so.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("test-a-pools,test-b")
  assert [s.name for s in c.eval.collections][1:] == ["ciral-so-test-a-pools", "ciral-so-test-b"]
  c.ciral.local_dir = str(HUB)
  resolved = runtime.resolve_assets(_without_bitext(c))  # the pools judge test-a's topics
  assert resolved.eval.collections[0].topics.endswith("topics.ciral-v1.0-so-test-a.tsv")
  assert resolved.eval.collections[0].qrels.endswith("qrels.ciral-v1.0-so-test-a-pools.tsv")
  c.ciral.split = "dev"  # too late to change the collections: refused, saying how
  with pytest.raises(ConfigError, match=re.escape("--config=configs/so.py:dev")):
    runtime.resolve_assets(_without_bitext(c))
  with pytest.raises(ValueError, match="CIRAL has no split 'test-c'"):
    module.get_config("test-a,test-c")


def _without_bitext(c):
  """A copy of `c` with only its CIRAL collections (no bitext to build). Deep: ConfigDict's
  own copies share the collections list's elements, which resolve_assets assigns to."""
  c = copy.deepcopy(c)
  c.data.train_file = ""
  c.eval.collections = [s for s in c.eval.collections if s.name.startswith("ciral-")]
  c.eval.dev_collection = ""
  return c


def test_so_config_runs_on_a_local_copy_to_the_final_table(tmp_path):
  teacher = save_tiny_bert(tmp_path / "teacher", seed=0)
  student = save_tiny_bert(tmp_path / "student", seed=1)
  workdir = tmp_path / "so"
  overrides = {
      "ciral.local_dir": HUB, "ciral.bitext": HUB / "quickmt-train.so-en",
      "ciral.heldout": 6, "ciral.heldout_rate": 4, "model.teacher": teacher,
      "model.student": student, "model.dtype": "float32", "model.dropout": 0.0,
      "train.batch_size": 8, "train.num_train_steps": 2, "train.warmup_steps": 1,
      "train.eval_every_steps": 2, "train.checkpoint_every_steps": 2, "data.max_length": 16,
      "eval.max_length": 64, "eval.batch_size": 16, "runtime.progress_bar": False,
      "runtime.cache_dir": tmp_path / "cache"}
  out = run_train(ROOT / "configs" / "so.py", workdir,
                  extra=[f"--config.{k}={v}" for k, v in overrides.items()])
  rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()
          if line.startswith("| ") and "collection" not in line}
  assert list(rows) == ["bitext-so-en", "ciral-so-dev", "ciral-so-test-a", "ciral-so-test-b"]
  header = next(line for line in out.stdout.splitlines() if line.startswith("| collection"))
  assert all(f" {m} " in header for m in ("MAP", "nDCG@20", "R@100"))
  results = json.loads((workdir / "eval.json").read_text())
  assert all(0 <= results[name][m] <= 1 for name in rows for m in ("MAP", "nDCG@20", "R@100"))
  assert "54 training pairs, 6 held out" in out.stderr  # 66 rows: 6 dropped, 6 held out
  assert (workdir / "runs" / "ciral-so-test-a.trec").is_file()
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "dev_MAP" in m] == [0, 2]
