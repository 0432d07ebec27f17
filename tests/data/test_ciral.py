"""CIRAL and hub bitext: the fixture has the hub repositories' layout and formats, downloads ask
huggingface_hub for the right repositories and files (its download calls replaced by copies
from the fixture), offline failures say what to download, bitext cleaning and held-out pairs,
parquet bitext, and the prompts a checkpoint declares."""

import dataclasses
import fnmatch
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from optical_jax.data.inputs import Bitext, CiralCollection
from optical_jax.files.textfiles import DataFormatError
from optical_jax.models.hf_checkpoint import sentence_transformers_prompts
from optical_jax.data import bitext, ciral, heldout
from optical_jax.evaluation.io import read_corpus, read_qrels, read_topics
from tests.helpers import ROOT

HUB = ROOT / "tests" / "fixtures" / "ciral" / "hub"
# Hub repository -> its copy in the fixture.
FIXTURE_REPOS = {"CIRAL/ciral": HUB / "ciral", "CIRAL/ciral-corpus": HUB / "ciral-corpus",
                 "quickmt/quickmt-train.so-en": HUB / "quickmt-train.so-en"}


def test_the_fixture_has_the_hub_layout_and_formats():
  for split in ciral.SPLITS:
    topics = read_topics(ciral.collection_path("somali", split, "topics", HUB))
    qrels = read_qrels(ciral.collection_path("somali", split, "qrels", HUB), topics=topics)
    assert set(qrels) == set(topics) and all(topics.values())
    assert any(0 in judged.values() for judged in qrels.values())  # judged non-relevant too
  assert ciral.collection_path("somali", "test-a", "topics", HUB) == (
      HUB / "ciral/ciral-somali/topics/topics.ciral-v1.0-so-test-a.tsv")
  assert ciral.collection_path("somali", "test-a-pools", "qrels", HUB) == (
      HUB / "ciral/ciral-somali/qrels/qrels.ciral-v1.0-so-test-a-pools.tsv")
  path = ciral.corpus_path("somali", str(HUB))
  assert path == HUB / "ciral-corpus/passages-v1.0/somali_passages.jsonl"
  first = json.loads(path.read_text().splitlines()[0])
  assert list(first) == ["docid", "title", "text", "url"]
  corpus = read_corpus(path)
  assert corpus[first["docid"]] == f"{first['title']} {first['text']}"  # title + text
  judged = {d for s in ciral.SPLITS for j in read_qrels(
      ciral.collection_path("somali", s, "qrels", HUB)).values() for d in j}
  assert judged <= set(corpus)


def test_a_local_copy_missing_a_file_names_the_layout(tmp_path):
  shutil.copytree(HUB / "ciral", tmp_path / "ciral")
  (tmp_path / "ciral/ciral-somali/qrels/qrels.ciral-v1.0-so-test-b.tsv").unlink()
  with pytest.raises(FileNotFoundError, match=r"qrels\.ciral-v1\.0-so-test-b\.tsv does not "
                     r"exist: config\.ciral\.local_dir must hold CIRAL/ciral's files"):
    ciral.collection_path("somali", "test-b", "qrels", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="CIRAL/ciral-corpus's files in its hub layout"):
    ciral.corpus_path("somali", str(tmp_path))


# The commit the fake hub's default branch is at.
MAIN = "0123abcd" * 5


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
  """huggingface_hub's two download calls replaced by copies from the fixture into a fake
  cache (snapshots named by the revision asked for, else `MAIN`), and its commit lookup by
  `MAIN`; returns the list of calls (function, repo_id, keyword arguments)."""
  import huggingface_hub
  from types import SimpleNamespace
  calls, cache = [], tmp_path / "hf"

  def repo_info(self, repo_id, **kwargs):
    calls.append(("repo_info", repo_id, kwargs))
    return SimpleNamespace(sha=kwargs.get("revision") or MAIN)

  def snapshot_download(repo_id, **kwargs):
    calls.append(("snapshot_download", repo_id, kwargs))
    snapshot = cache / repo_id.replace("/", "--") / "snapshots" / (kwargs["revision"] or MAIN)
    source = FIXTURE_REPOS[repo_id]
    for path in source.rglob("*"):
      relative = path.relative_to(source).as_posix()
      if path.is_file() and any(fnmatch.fnmatch(relative, pattern)
                                for pattern in kwargs.get("allow_patterns") or ["*"]):
        (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, snapshot / relative)
    return str(snapshot)

  def hf_hub_download(repo_id, filename, **kwargs):
    calls.append(("hf_hub_download", repo_id, dict(kwargs, filename=filename)))
    target = (cache / repo_id.replace("/", "--") / "snapshots" / (kwargs["revision"] or MAIN)
              / filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE_REPOS[repo_id] / filename, target)
    return str(target)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  return calls


def test_ciral_files_come_from_the_hub_repositories(fake_hub):
  files = CiralCollection("somali", "test-a").files()
  assert Path(files["topics"]).name == "topics.ciral-v1.0-so-test-a.tsv"
  assert read_topics(files["topics"]) == read_topics(ciral.collection_path(
      "somali", "test-a", "topics", str(HUB)))
  assert read_corpus(files["corpus"]) == read_corpus(ciral.corpus_path("somali", str(HUB)))
  assert fake_hub == [
      ("snapshot_download", "CIRAL/ciral", dict(
          repo_type="dataset", revision=None, local_files_only=False,
          allow_patterns=["ciral-somali/topics/*", "ciral-somali/qrels/*"])),
      ("snapshot_download", "CIRAL/ciral", dict(
          repo_type="dataset", revision=None, local_files_only=False,
          allow_patterns=["ciral-somali/topics/*", "ciral-somali/qrels/*"])),
      ("hf_hub_download", "CIRAL/ciral-corpus", dict(
          repo_type="dataset", revision=None, local_files_only=False,
          filename="passages-v1.0/somali_passages.jsonl"))]


HUB_BITEXT = Bitext(source="quickmt/quickmt-train.so-en", files="data/train-*.parquet",
                    student_field="so", teacher_field="en", limit=20, heldout=3, rate=3,
                    max_chars=300)


def test_hub_bitext_is_downloaded_once_then_read_from_the_build(fake_hub, tmp_path,
                                                                 monkeypatch):
  built = HUB_BITEXT.build(tmp_path / "cache", progress=False)
  assert fake_hub == [("snapshot_download", "quickmt/quickmt-train.so-en", dict(
      repo_type="dataset", revision=None, local_files_only=False,
      allow_patterns=["data/train-*.parquet"]))]
  assert len(bitext.read_pairs(built / "train.tsv", ("so", "en"))) == 20
  manifest = json.loads((built / "manifest.json").read_text())
  assert manifest["source"] == {"name": "quickmt/quickmt-train.so-en",
                                "files": "data/train-*.parquet", "revision": MAIN}
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # built: offline is fine, and no hub call
  assert HUB_BITEXT.build(tmp_path / "cache") == built
  assert len(read_topics(built / "dev" / "topics.tsv")) == 3 and len(fake_hub) == 1


@pytest.mark.parametrize("fetch, repo", [
    (lambda tmp: CiralCollection("somali", "dev").files(), "CIRAL/ciral"),
    (lambda tmp: ciral.corpus_path("somali"), "CIRAL/ciral-corpus"),
    (lambda tmp: dataclasses.replace(HUB_BITEXT, files="data/*").build(tmp),
     "quickmt/quickmt-train.so-en")])
def test_offline_and_not_cached_says_what_to_download_and_where(fetch, repo, tmp_path,
                                                                monkeypatch):
  import huggingface_hub
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  asked = []

  def not_cached(repo_id, **kwargs):
    asked.append(kwargs["local_files_only"])
    raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache\nsecond line")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
  with pytest.raises(FileNotFoundError) as error:
    fetch(tmp_path)
  message = str(error.value)
  assert asked == [True]  # the cache only: no network attempt
  assert "\n" not in message
  assert f"HF_HUB_OFFLINE=1 and it is not in the cache; where there is internet run `hf " \
         f"download {repo} --repo-type dataset --include" in message
  assert huggingface_hub.constants.HF_HUB_CACHE in message


def _so_config(tmp_path, **overrides):
  from tests.helpers import load_config
  config = load_config(ROOT / "configs" / "so.py")
  config.runtime.cache_dir = str(tmp_path / "cache")
  config.runtime.progress_bar = False
  config.model.teacher, config.model.student = "org/teacher", "org/student"
  config.data.limit, config.ciral.heldout, config.ciral.heldout_rate = 20, 3, 3
  for field, value in overrides.items():
    group, key = field.split(".")
    config[group][key] = value
  return config


def test_every_hub_input_is_pinned_to_its_commit_and_read_at_it(fake_hub, tmp_path):
  from optical_jax.data.inputs import resolve_inputs
  pinned = "feed" * 10  # a commit the user pins by hand
  config = resolve_inputs(_so_config(tmp_path, **{"ciral.corpus_revision": pinned})).config
  assert (config.model.teacher_revision, config.model.student_revision) == (MAIN, MAIN)
  assert (config.ciral.revision, config.ciral.corpus_revision,
          config.ciral.bitext_revision) == (MAIN, pinned, MAIN)
  # Every download asked for the commit it was pinned to.
  downloads = [(f, repo, k["revision"]) for f, repo, k in fake_hub if f != "repo_info"]
  assert sorted(set(downloads)) == [
      ("hf_hub_download", "CIRAL/ciral-corpus", pinned),
      ("snapshot_download", "CIRAL/ciral", MAIN),
      ("snapshot_download", "quickmt/quickmt-train.so-en", MAIN)]
  assert f"/snapshots/{pinned}/" in config.eval.collections[1].corpus


def test_a_workdirs_recorded_commits_are_loaded_again_and_other_inputs_resolved_anew(
    fake_hub, tmp_path):
  from optical_jax.data.inputs import resolve_inputs
  recorded = "abcd" * 10  # the commits a run recorded; the hub's default branch moved since
  workdir = tmp_path / "W"
  workdir.mkdir()
  saved = _so_config(tmp_path, **{"model.teacher_revision": recorded,
                                  "ciral.revision": recorded, "ciral.corpus_revision": recorded,
                                  "ciral.bitext_revision": recorded})
  saved.model.student = "org/another-student"  # the run's student was another model
  (workdir / "config.json").write_text(saved.to_json_best_effort())
  config = resolve_inputs(_so_config(tmp_path), training=False, workdir=workdir).config
  assert (config.model.teacher_revision, config.ciral.revision, config.ciral.corpus_revision
          ) == (recorded, recorded, recorded)
  assert config.model.student_revision == MAIN  # not the run's student: its own commit
  assert {k["revision"] for f, _, k in fake_hub if f.endswith("download")} == {recorded}


@pytest.mark.parametrize("field, value, message", [
    ("model.teacher_revision", "main", r"config\.model\.teacher_revision must be a commit hash "
     r"\(40 hex digits\)"),
    ("ciral.revision", "a" * 40, r"config\.ciral\.revision pins a hub repository, but "
     r"config\.ciral\.local_dir='.*hub' reads no hub repository; leave it ''"),
])
def test_a_revision_that_pins_nothing_or_is_no_commit_is_refused(tmp_path, field, value,
                                                                  message):
  from optical_jax.config import ConfigError
  from optical_jax.data.inputs import resolve_inputs
  config = _so_config(tmp_path, **{field: value, "ciral.local_dir": str(HUB),
                                   "ciral.bitext": str(FIXTURE_REPOS[
                                       "quickmt/quickmt-train.so-en"])})
  config.model.teacher = config.model.student = str(HUB)  # local: no hub call at all
  config.model.teacher_revision = value if field == "model.teacher_revision" else ""
  with pytest.raises(ConfigError, match=message):
    resolve_inputs(config)


def test_cleaning_drops_empty_long_identical_and_repeated_pairs():
  pairs = [("Waa  maxay?", "What is it?"), ("", "Empty."), ("Haa", ""), ("x" * 50, "Long."),
           ("Same text.", "same  TEXT."), ("Waa maxay?", "What is it?"),
           ("WAA MAXAY?", "what is it?"), ("Waa maxay?", "What is that?")]
  dropped = Counter()
  kept = list(heldout.clean_pairs(pairs, max_chars=40, dropped=dropped))
  assert kept == [("Waa maxay?", "What is it?"), ("Waa maxay?", "What is that?")]
  assert dropped == {"empty": 2, "too_long": 1, "identical": 1, "duplicate": 2}


def _pairs(n, offset=0):
  return [(f"Jumlad tiro {i} oo af Soomaali ah.", f"Sentence number {i} in English.")
          for i in range(offset, offset + n)]


def test_heldout_pairs_share_no_side_with_training_and_do_not_depend_on_the_limit(tmp_path):
  # A later pair repeats the English of an early pair that will be held out, and vice versa.
  pairs = _pairs(400)
  heldout_first = next(p for p in pairs if heldout.is_heldout_candidate(p[0], 10))
  pairs.insert(0, ("Jumlad kale oo gaar ah oo cusub.", heldout_first[1]))
  built = {}
  for limit in (50, 0):
    manifest = heldout.build_heldout(tmp_path / str(limit), lambda: iter(pairs), limit=limit,
                                    heldout=8, rate=10, progress=False)
    train = bitext.read_pairs(tmp_path / str(limit) / "train.tsv", ("s", "t"))
    topics = read_topics(tmp_path / str(limit) / "dev" / "topics.tsv")
    corpus = read_corpus(tmp_path / str(limit) / "dev" / "corpus.tsv")
    qrels = read_qrels(tmp_path / str(limit) / "dev" / "qrels.txt", topics=topics)
    assert len(topics) == 8 and all(qrels[q] == {f"d{q[1:]}": 1} for q in topics)
    held = set(topics.values()) | set(corpus.values())
    assert not held & {side for pair in train for side in pair}
    assert manifest["counts"]["heldout"] == 8 and manifest["counts"]["train"] == len(train)
    assert manifest["counts"]["dropped"]["shares_a_side_with_heldout"] == 1
    built[limit] = (train, topics)
  assert len(built[50][0]) == 50 and built[50][0] == built[0][0][:50]  # a prefix
  assert built[50][1] == built[0][1]  # the same held-out pairs
  # Built once: a second call reads the manifest and never opens the pairs.
  assert heldout.build_heldout(tmp_path / "50", lambda: 1 / 0, limit=50, heldout=8, rate=10)


def test_a_build_another_process_put_in_place_after_this_one_looked_is_kept(tmp_path,
                                                                           monkeypatch):
  directory = tmp_path / "bitext" / "built"
  old = heldout.build_heldout(tmp_path / "old", lambda: iter(_pairs(400)), heldout=8, rate=10,
                             progress=False)
  (tmp_path / "old" / "manifest.json").write_text(json.dumps({**old, "version": 0}))
  shutil.copytree(tmp_path / "old", directory)  # an older version's build
  theirs = heldout.build_heldout(tmp_path / "theirs", lambda: iter(_pairs(400)), heldout=8,
                                rate=10, progress=False)
  (tmp_path / "theirs" / "theirs.txt").write_text("built by another process")

  class OtherProcessFinishes:  # right after this process read the old manifest
    def __getattr__(self, name):
      return getattr(json, name)

    def loads(self, text):
      value = json.loads(text)
      if value.get("version") == 0 and (tmp_path / "theirs").exists():
        shutil.rmtree(directory)
        os.rename(tmp_path / "theirs", directory)
      return value

  monkeypatch.setattr(heldout, "json", OtherProcessFinishes())
  manifest = heldout.build_heldout(directory, lambda: iter(_pairs(400)), heldout=8, rate=10,
                                  progress=False)
  assert manifest == theirs
  assert (directory / "theirs.txt").read_text() == "built by another process"
  assert sorted(p.name for p in directory.parent.iterdir()) == ["built"]  # nothing left aside


def test_too_few_rows_to_hold_any_out_is_an_error(tmp_path):
  with pytest.raises(DataFormatError, match=r"no pair was held out of 3 rows \(1 in 1000000"):
    heldout.build_heldout(tmp_path / "b", lambda: iter(_pairs(3)), heldout=5, rate=1_000_000,
                         source={"name": "tiny"}, progress=False)


def test_parquet_bitext_reads_named_and_struct_columns_and_names_bad_rows(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  path = tmp_path / "pairs.parquet"
  pq.write_table(pa.Table.from_pylist([
      {"translation": {"so": "Nabad.", "en": "Peace."}, "sco": 1.0},
      {"translation": {"so": "Mahadsanid.", "en": "Thank you."}, "sco": 0.5}]), path)
  assert bitext.read_pairs(path, ("translation.so", "translation.en")) == [
      ("Nabad.", "Peace."), ("Mahadsanid.", "Thank you.")]
  with pytest.raises(DataFormatError, match=r"pairs\.parquet: no column 'so' \(columns: "
                     r"translation, sco\)"):
    bitext.read_pairs(path, ("so", "en"))
  pq.write_table(pa.Table.from_pylist([{"so": "Nabad.", "en": "Peace."},
                                       {"so": None, "en": "Nothing."}]), path)
  with pytest.raises(DataFormatError, match=r"pairs\.parquet: row 2: column 'so' must be a "
                     r"string, got null"):
    bitext.read_pairs(path, ("so", "en"))
  assert list(bitext.iter_raw_pairs([path], ("so", "en"))) == [("Nabad.", "Peace."),
                                                               ("", "Nothing.")]


def test_the_fixture_bitext_is_quickmt_shaped_and_cleaned():
  pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  path = HUB / "quickmt-train.so-en" / "data" / "train-00000-of-00001.parquet"
  assert pq.ParquetFile(path).schema_arrow.names == ["so", "en", "sco"]
  dropped = Counter()
  kept = list(heldout.clean_pairs(bitext.iter_raw_pairs([path], ("so", "en")), max_chars=300,
                                 dropped=dropped))
  assert len(kept) == 60
  assert dropped == {"empty": 2, "identical": 1, "too_long": 1, "duplicate": 2}


@pytest.mark.parametrize("prompts, expected", [
    ({"query": "query: ", "passage": "passage: "}, {"query": "query: ", "passage": "passage: "}),
    ({"query": "search_query: ", "document": "search_document: "},
     {"query": "search_query: ", "passage": "search_document: "}),
    ({"retrieval.query": "Represent the query: ", "retrieval.passage": "Doc: "},
     {"query": "Represent the query: ", "passage": "Doc: "}),
    ({}, {"query": "", "passage": ""}),
    (None, {"query": "", "passage": ""})])
def test_prompts_are_read_from_the_checkpoints_sentence_transformers_config(tmp_path, prompts,
                                                                            expected):
  if prompts is not None:
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"sentence_transformers": "3.0.1"}, "prompts": prompts,
         "default_prompt_name": None, "similarity_fn_name": "cosine"}))
  assert sentence_transformers_prompts(tmp_path) == expected


def test_a_killed_builds_temporary_directory_is_swept(tmp_path):
  import subprocess
  child = subprocess.Popen(["true"])  # a process that has surely ended
  child.wait()
  from optical_jax.files.fileio import host_tag
  ours = lambda pid, name: tmp_path / "bitext" / f".optical-tmp-{pid}-{host_tag()}-00c0ffee-{name}"
  stale = ours(child.pid, "other-source")  # a build killed half way
  (stale / "dev").mkdir(parents=True)
  (stale / "train.unfiltered.tsv").write_text("x\ty\n" * 1000)
  live = ours(os.getpid(), "busy-source")  # a build still running
  live.mkdir()
  user = tmp_path / "bitext" / f"run.tmp{child.pid}"  # a user's folder, named like a temporary
  user.mkdir()
  heldout.build_heldout(tmp_path / "bitext" / "built", lambda: iter(_pairs(400)), heldout=8,
                       rate=10, progress=False)
  assert not stale.exists() and live.exists() and user.exists()


def test_evaluation_leaves_a_training_only_hub_dataset_alone(tmp_path, monkeypatch):
  import huggingface_hub
  from optical_jax.config import base_config
  from optical_jax.data.inputs import resolve_inputs
  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: pytest.fail(
      "evaluation asked the hub about the training data"))
  config = base_config()
  config.model.teacher = str(HUB)  # a local directory: no hub call for it either
  config.data.hf_dataset, config.data.hf_revision = "org/pairs", "c" * 40
  assert resolve_inputs(config, training=False).config.data.hf_revision == "c" * 40


@pytest.mark.parametrize("manifest", [None, '{"name": "my notes"}'])
def test_a_directory_in_the_builds_place_without_our_manifest_is_never_removed(tmp_path,
                                                                                manifest):
  from optical_jax.files.cache_files import CacheWriteError
  directory = tmp_path / "bitext" / "built"
  directory.mkdir(parents=True)
  (directory / "notes.txt").write_text("a user's file")
  if manifest is not None:  # a file of the same name that is not a build's
    (directory / "manifest.json").write_text(manifest)
  with pytest.raises(CacheWriteError, match="is in the way of the bitext build"):
    heldout.build_heldout(directory, lambda: iter(_pairs(400)), heldout=8, rate=10,
                          progress=False)
  assert (directory / "notes.txt").read_text() == "a user's file"
  assert sorted(p.name for p in directory.parent.iterdir()) == ["built"]  # no temporary left
