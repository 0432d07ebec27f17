"""The offline English–Chichewa collections: splits disjoint, qrels right by hand."""

import json
from pathlib import Path

import pytest

from optical_jax.data import bible
from optical_jax.evaluation import read_corpus, read_qrels, read_topics


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return bible.build(tmp_path_factory.mktemp("bible"))


def test_counts_and_no_leakage(built):
  counts = built["counts"]
  assert counts["aligned_verses"] > 30000 and counts["train_pairs"] > 27000
  assert counts["leaked_test_verses"] == 0
  assert counts["test"] == {"queries": 500, "passages": 431, "verses": 2031,
                            "context_queries": 402}
  # dev on the test's scale, so that levers of a few hundredths can be told apart
  assert counts["dev"] == {"queries": 500, "passages": 394, "verses": 1826,
                           "context_queries": 361}


def test_held_out_books_never_appear_in_training(built):
  held = set(bible.TEST_BOOKS) | set(bible.DEV_BOOKS)
  train_books = set()
  test_texts = set(read_topics(f"{built['test']}/queries.en.tsv").values()) | set(
      read_topics(f"{built['test']}/queries.ny.tsv").values())
  with open(built["train"], encoding="utf-8") as f:
    for line in f:
      ny, en, verse_id = line.rstrip("\n").split("\t")
      train_books.add(int(verse_id.split(".")[0]))
      assert ny not in test_texts and en not in test_texts
  assert not train_books & held


def test_qrels_checked_by_hand(built):
  test = built["test"]
  queries_ny = read_topics(f"{test}/queries.ny.tsv")
  queries_en = read_topics(f"{test}/queries.en.tsv")
  passages_en = read_corpus(f"{test}/passages.en.tsv")
  passages_ny = read_corpus(f"{test}/passages.ny.tsv")
  qrels = read_qrels(f"{test}/qrels.txt", topics=queries_ny)
  # Ruth 1:5 is in the passage of verses 1-5 of Ruth 1, in both languages.
  assert qrels["8.1.5"] == {"8.1.1-5": 1}
  assert queries_en["8.1.5"] == ("And Mahlon and Chilion died also both of them; and the woman "
                                 "was left of her two sons and her husband.")
  assert queries_en["8.1.5"] in passages_en["8.1.1-5"]
  assert queries_ny["8.1.5"].startswith("Koma Maloni ndi Kilioni anamwalira")
  assert queries_ny["8.1.5"] in passages_ny["8.1.1-5"]
  for qid, judged in qrels.items():
    (pid,) = judged
    book, chapter, verse = map(int, qid.split("."))
    first, last = map(int, pid.split(".")[2].split("-"))
    assert pid.startswith(f"{book}.{chapter}.") and first <= verse <= last <= first + 4
    assert queries_en[qid] in passages_en[pid] and queries_ny[qid] in passages_ny[pid]


def test_context_queries_are_left_out_of_the_passage_they_ask_for(built):
  """A context query is a passage's middle verse; the passage is the verses around it."""
  test = built["test"]
  full = read_corpus(f"{test}/passages.en.tsv")
  for lang in ("en", "ny"):
    queries = read_topics(f"{test}/context/queries.{lang}.tsv")
    passages = read_corpus(f"{test}/context/passages.{lang}.tsv")
    qrels = read_qrels(f"{test}/context/qrels.txt", topics=queries)
    assert len(queries) == len(qrels) == 402 and len(passages) == 431
    for qid, judged in qrels.items():
      (pid,) = judged
      book, chapter, verse = map(int, qid.split("."))
      first, last = map(int, pid.split(".")[2].split("-"))
      assert pid.startswith(f"{book}.{chapter}.") and first < verse < last
      assert verse == first + (last - first + 1) // 2  # the middle one
      assert queries[qid] not in passages[pid]
  queries = read_topics(f"{test}/context/queries.en.tsv")
  passages = read_corpus(f"{test}/context/passages.en.tsv")
  # Ruth 1:1-5 without its middle verse, 1:3, by hand.
  assert queries["8.1.3"].startswith("And Elimelech Naomi’s husband died")
  assert full["8.1.1-5"] == passages["8.1.1-5"].replace(
      "continued there. And they took", f"continued there. {queries['8.1.3']} And they took")
  # Passages of 1 or 2 verses (chapter ends), and one whose verses repeat its middle one (Mark
  # 9:46-50: 9:46 and 9:48 read "Where their worm dieth not"), stay whole and ask nothing.
  judged = {pid for (pid,) in map(tuple, read_qrels(f"{test}/context/qrels.txt").values())}
  whole = [pid for pid in passages if pid not in judged]
  assert all(passages[pid] == full[pid] for pid in whole)
  short = [p for p in whole if int(p.split("-")[1]) - int(p.split(".")[2].split("-")[0]) < 2]
  assert short and set(whole) - set(short) == {"41.9.46-50"}


def test_build_is_deterministic(built, tmp_path):
  again = bible.build(tmp_path)
  assert again["train_sha256"] == built["train_sha256"]
  assert (tmp_path / "test" / "qrels.txt").read_text() == (
      open(f"{built['test']}/qrels.txt").read())


def test_a_torn_manifest_is_built_again_and_every_file_written_whole(built, tmp_path,
                                                                     monkeypatch, caplog):
  import os
  (tmp_path / "manifest.json").write_text('{"version": 1, "train": "/tm')  # a crash mid-write
  renamed = []
  real_replace = os.replace
  monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(b).name),
                                                   real_replace(a, b)))
  again = bible.build(tmp_path)
  assert f"{tmp_path / 'manifest.json'}: unreadable; building" in caplog.text
  assert again["train_sha256"] == built["train_sha256"]
  assert json.loads((tmp_path / "manifest.json").read_text()) == again
  # Through a temporary renamed into place, the manifest last.
  assert {"train.tsv", "qrels.txt", "manifest.json"} <= set(renamed)
  assert renamed[-1] == "manifest.json"
  assert not [p for p in tmp_path.rglob(".optical-tmp-*")]
