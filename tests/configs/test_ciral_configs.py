"""The CIRAL language configs: one builder for four languages, command-line overrides reaching
the asset references, and configs/so.py's whole path (hub layout through
config.ciral.local_dir, parquet bitext, tiny local models) to the final table."""

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


@pytest.mark.parametrize("code, language", CONFIGS.items())
def test_each_language_config_comes_from_the_one_builder(code, language):
  c = load_config(ROOT / "configs" / f"{code}.py")
  validate(c)
  assert c.to_dict() == ciral.ciral_config(language).to_dict()
  assert (c.model.teacher, c.model.student) == ("BAAI/bge-small-en-v1.5",
                                                 "intfloat/multilingual-e5-small")
  names = [spec.name for spec in c.eval.collections]
  assert names == [f"bitext-{code}-en", f"ciral-{code}-dev", f"ciral-{code}-test-a",
                   f"ciral-{code}-test-b"]
  assert c.eval.dev_collection == f"bitext-{code}-en"
  ciral_spec = c.eval.collections[2]
  assert (ciral_spec.query_encoder, ciral_spec.doc_encoder) == ("teacher", "student")
  assert ciral_spec.topics.startswith(f"ciral:{language}/test-a/topics?")
  assert ciral_spec.corpus == f"ciral:{language}/corpus?local_dir="
  text = ciral.BITEXTS[language]
  assert c.data.train_file.endswith(f"&source={text['source']}")
  assert (c.data.student_field, c.data.teacher_field) == (text["student"], text["teacher"])


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
