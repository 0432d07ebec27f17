"""The CIRAL language configs: one builder for four languages (configs/ciral.py), command-line
overrides reaching every input (typed specs derived when the config resolves), and
configs/so.py's whole path (hub layout through config.ciral.local_dir, parquet bitext, tiny
local models) to the final table."""

import ast
import json
from pathlib import Path
from runpy import run_path

import pytest

from optical_jax.config import ConfigError, validate
from optical_jax.data.inputs import bitext_collection_name, ciral_inputs, resolve_inputs
from optical_jax.evaluation.collections import read_results, results_dir
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
  """`ciral_config`, from the file beside the configs that they run."""
  source = (ROOT / "configs" / "so.py").read_text()
  assert 'run_path(str(Path(__file__).with_name("ciral.py")))["ciral_config"]' in source
  return run_path(str(ROOT / "configs" / "ciral.py"))["ciral_config"]


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
  bitext, splits = ciral_inputs(c)
  names = [bitext_collection_name(c), *(s.name for s in splits)]
  assert names == [f"bitext-{code}-en", f"ciral-{code}-dev", f"ciral-{code}-test-a",
                   f"ciral-{code}-test-b"]
  assert c.eval.dev_collection == f"bitext-{code}-en"
  assert (bitext.source, bitext.files, bitext.student_field, bitext.teacher_field) == \
      BITEXTS[code]
  assert {s.language for s in splits} == {language}
  leaves = _leaves(c.to_dict())
  assert not {BITEXTS[other][1] for other in CONFIGS if other != code} & set(leaves)


def test_overrides_after_loading_reach_every_input(tmp_path):
  c = load_config(ROOT / "configs" / "so.py")
  c.ciral.local_dir = str(HUB)  # as --config.ciral.local_dir=... sets it
  c.ciral.bitext = str(tmp_path / "my pairs.parquet")
  c.data.limit = 123
  c.ciral.split = "test-b"  # the splits too: derived when the config resolves
  bitext, splits = ciral_inputs(c)
  assert (bitext.source, bitext.limit) == (str(tmp_path / "my pairs.parquet"), 123)
  assert [(s.split, s.local_dir) for s in splits] == [("test-b", str(HUB))]
  c.ciral.split = "dev,test-c"
  with pytest.raises(ConfigError, match="config.ciral.split: CIRAL has no split 'test-c'"):
    ciral_inputs(c)


def test_splits_chosen_when_the_config_loads_or_later_resolve_to_their_files(tmp_path):
  import importlib.util  # config_flags passes the SPLITS of --config=FILE:SPLITS to get_config
  spec = importlib.util.spec_from_file_location("so", ROOT / "configs" / "so.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("test-a-pools,test-b")
  c.ciral.local_dir, c.ciral.bitext = str(HUB), str(HUB / "quickmt-train.so-en")
  c.ciral.heldout, c.ciral.heldout_rate = 6, 4
  c.runtime.cache_dir, c.runtime.progress_bar = str(tmp_path / "cache"), False
  inputs = resolve_inputs(c)
  collections = {s.name: s for s in inputs.config.eval.collections}
  assert list(collections) == ["bitext-so-en", "ciral-so-test-a-pools", "ciral-so-test-b"]
  pools = collections["ciral-so-test-a-pools"]  # the pools judge test-a's topics
  assert pools.topics.endswith("topics.ciral-v1.0-so-test-a.tsv")
  assert pools.qrels.endswith("qrels.ciral-v1.0-so-test-a-pools.tsv")
  assert Path(inputs.config.data.train_file) == inputs.bitext / "train.tsv"
  assert collections["bitext-so-en"].topics == str(inputs.bitext / "dev" / "topics.tsv")
  c.ciral.split = "dev"  # changed after loading: the collections follow
  assert [s.name for s in resolve_inputs(c).config.eval.collections] == [
      "bitext-so-en", "ciral-so-dev"]
  assert not c.eval.collections and not c.data.train_file  # the config stores nothing derived
  with pytest.raises(ValueError, match="CIRAL has no split 'test-c'"):
    module.get_config("test-a,test-c")


@pytest.mark.slow
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
  # Each CIRAL split also has its MaxSim rerank of the dense top 100 (ciral.maxsim_depth).
  splits = ["ciral-so-dev", "ciral-so-test-a", "ciral-so-test-b"]
  assert list(rows) == ["bitext-so-en", *[n for s in splits for n in (s, f"{s}, MaxSim")]]
  header = next(line for line in out.stdout.splitlines() if line.startswith("| collection"))
  assert all(f" {m} " in header for m in ("MAP", "nDCG@20", "R@100"))
  results = read_results(workdir, 2)["results"]
  assert all(0 <= results[name][m] <= 1 for name in rows for m in ("MAP", "nDCG@20", "R@100"))
  assert "54 training pairs, 6 held out" in out.stderr  # 66 rows: 6 dropped, 6 held out
  assert (results_dir(workdir, 2) / "runs" / "ciral-so-test-a.trec").is_file()
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "dev_MAP" in m] == [0, 2]
