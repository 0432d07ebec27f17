"""Collections checked before training: topics and qrels parsed in full, the corpus scanned once
and its scan cached by content, malformed files named by file and line, judged documents
absent from the corpus warned about with their count."""

import json
import logging
import re
import shutil

import ml_collections
import pytest

from optical_jax.evaluation import DataFormatError, TextEncoder, read_corpus
from optical_jax.evaluation import check, corpus_files
from optical_jax.evaluation.check import check_collections
from optical_jax.evaluation.collections import evaluate_collection
from optical_jax.evaluation.corpus_files import forget_scans, scan_corpus
from optical_jax.evaluation.io import iter_corpus
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.runtime.mesh import data_mesh
from tests.helpers import ROOT

CIRAL = ROOT / "tests" / "fixtures" / "ciral" / "hub"
CORPUS = CIRAL / "ciral-corpus" / "passages-v1.0" / "somali_passages.jsonl"
SOMALI = CIRAL / "ciral" / "ciral-somali"


def spec(name: str, corpus=CORPUS, topics=None, qrels=None) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name=name, corpus=str(corpus),
      topics=str(topics or SOMALI / "topics" / f"topics.ciral-v1.0-so-{name}.tsv"),
      qrels=str(qrels or SOMALI / "qrels" / f"qrels.ciral-v1.0-so-{name}.tsv"),
      query_encoder="teacher", doc_encoder="teacher"))


@pytest.fixture(autouse=True)
def fresh_process():
  forget_scans()  # each test reads its files as a new process would
  yield
  forget_scans()


def test_check_collections_counts_and_scans_a_shared_corpus_once(tmp_path, caplog,
                                                                monkeypatch):
  with caplog.at_level(logging.INFO, logger="optical_jax"):
    summaries = check_collections([spec("dev"), spec("test-a"), spec("test-b")], tmp_path)
  dev = summaries[0]
  assert (dev.name, dev.topics, dev.judged_queries, dev.passages, dev.absent_docids) == (
      "dev", 3, 3, 36, 0)
  assert dev.judgments == 12 and 0 < dev.relevant < dev.judgments
  assert [s.corpus_cached for s in summaries] == [False, True, True]  # scanned once
  assert "collection dev: 3 topics (3 judged), 12 judgments" in caplog.text
  assert "corpus 36 passages (scanned in" in caplog.text
  assert "all judged documents in the corpus" in caplog.text
  assert (tmp_path / "corpus" / "scans").is_dir()
  # A rerun (another process): the scan comes from the cache, the corpus is not read.
  forget_scans()
  monkeypatch.setattr(corpus_files, "iter_corpus", lambda path: pytest.fail("read again"))
  again = check_collections([spec("dev")], tmp_path)
  assert again[0].corpus_cached and again[0].passages == 36


def test_iter_corpus_streams_what_read_corpus_reads(tmp_path):
  tsv = tmp_path / "corpus.tsv"
  tsv.write_bytes("\ufeffd1\ttitle one\t text one \n\nd2\ttwo\r\n".encode())
  header = tmp_path / "header.tsv"
  header.write_text("DocID\tTitle\tText\nd1\tone\tx\nd2\ttwo\n")
  for path in (CORPUS, tsv, header):
    assert {d: t for _, d, t in iter_corpus(path)} == read_corpus(path)
  assert [n for n, _, _ in iter_corpus(tsv)] == [1, 3]
  assert [n for n, _, _ in iter_corpus(header)] == [2, 3]  # the header is no document


@pytest.mark.parametrize("which, content, error", [
    ("qrels", "14 0 CAASIMADA#1000#0 1\n16 CAASIMADA#1000#1 1\n",
     ":2: expected 4 columns 'qid 0 docid relevance', got 3"),
    ("corpus", '{"docid": "a", "text": "x"}\n{"docid": "b", "title": "no text"}\n',
     ":2: no text field"),
    ("corpus", '{"docid": "a", "text": "x"}\n\n{"docid": "a", "text": "y"}\n',
     ":3: duplicate document id 'a'"),
    ("topics", "14\tschools\n16\n", ":2: expected 'qid<TAB>text'"),
])
def test_a_malformed_collection_file_is_named_with_its_line(tmp_path, which, content, error):
  path = tmp_path / ("bad.jsonl" if which == "corpus" else f"bad-{which}.tsv")
  path.write_text(content)
  with pytest.raises(DataFormatError, match="^" + re.escape(f"{path}{error}")):
    check_collections([spec("dev", **{which: path})], tmp_path / "cache")


@pytest.mark.slow
def test_judged_documents_absent_from_the_corpus_warn_with_their_count(tmp_path, caplog,
                                                                     tiny_bert_dir):
  qrels = tmp_path / "qrels.tsv"
  lines = (SOMALI / "qrels" / "qrels.ciral-v1.0-so-dev.tsv").read_text().splitlines()
  # Two judged passages in another id format (another corpus version).
  lines[0] = lines[0].replace("#", "-", 2)
  lines[1] = lines[1].replace("#", "-", 2)
  qrels.write_text("\n".join(lines) + "\n")
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    (summary,) = check_collections([spec("dev", qrels=qrels)], tmp_path)
  assert summary.absent_docids == 2 and summary.judged_docids == 7  # distinct documents
  assert f"{qrels}: 2 of 7 judged documents" in caplog.text and str(CORPUS) in caplog.text
  # The evaluation says so too (in a process that did not check first).
  forget_scans()
  check._warned.clear()
  caplog.clear()
  encoder = TextEncoder(load_encoder(tiny_bert_dir), data_mesh(), batch_size=4).bind()
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    evaluate_collection(spec("dev", qrels=qrels), {"teacher": encoder}, progress=False)
  assert f"{qrels}: 2 of 7 judged documents" in caplog.text


def test_the_scan_cache_follows_the_content_and_a_broken_entry_is_scanned_again(tmp_path,
                                                                               caplog):
  corpus = tmp_path / "a" / "passages.jsonl"
  corpus.parent.mkdir()
  shutil.copy(CORPUS, corpus)
  first = scan_corpus(corpus, tmp_path / "cache")
  assert not first.cached and first.docids == list(read_corpus(CORPUS))
  forget_scans()
  copy = tmp_path / "b.jsonl"
  shutil.copy(CORPUS, copy)
  assert scan_corpus(copy, tmp_path / "cache").cached  # the same content elsewhere
  forget_scans()
  with open(corpus, "a") as f:
    f.write(json.dumps({"docid": "new", "text": "x"}) + "\n")
  edited = scan_corpus(corpus, tmp_path / "cache")
  assert not edited.cached and edited.docids[-1] == "new"
  forget_scans()
  (entry,) = [p for p in (tmp_path / "cache" / "scans").iterdir()
              if p.name.startswith(str(CORPUS.stat().st_size))]
  entry.write_text(entry.read_text()[:50])  # cut short
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    again = scan_corpus(copy, tmp_path / "cache")
  assert not again.cached and again.docids == first.docids
  assert f"{entry}: broken corpus scan cache entry (unreadable" in caplog.text
  assert json.loads(entry.read_text())["docids"] == first.docids  # written whole again


@pytest.mark.parametrize("names, message", [
    (["../x", "dev"], r"collections\[0\]\.name '\.\./x': a collection's name is its run file's"),
    (["dev", "a/b"], r"collections\[1\]\.name 'a/b'"),
    (["dev", ".."], r"collections\[1\]\.name '\.\.'"),
    (["dev", "a\nb"], r"collections\[1\]\.name 'a\\nb'"),
    (["dev", "dev"], r"collections\[1\]\.name 'dev': another collection has this name"),
])
def test_collection_names_that_cannot_name_their_files_are_refused_first(tmp_path, names,
                                                                         message):
  from optical_jax.config import ConfigError
  specs = [spec("dev") for _ in names]
  for s, name in zip(specs, names):
    s.name = name
  with pytest.raises(ConfigError, match=message):
    check_collections(specs, tmp_path / "cache")


def test_a_cached_scan_holding_an_id_with_whitespace_is_scanned_again_and_refused(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text('{"docid": "d1", "text": "a"}\n')
  scan_corpus(corpus, tmp_path / "cache")
  entry = next((tmp_path / "cache" / "scans").glob("*.json"))
  value = json.loads(entry.read_text())
  value["docids"] = ["d 1"]  # as a scan made before ids were checked would hold
  entry.write_text(json.dumps(value))
  forget_scans()
  corpus.write_text('{"docid": "d 1", "text": "a"}\n')
  with pytest.raises(DataFormatError, match="document id 'd 1' contains whitespace"):
    scan_corpus(corpus, tmp_path / "cache")
