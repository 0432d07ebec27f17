"""Readers name the file and line of every bad input."""

import pytest

from optical_jax.evaluation import (DataFormatError, read_corpus, read_qrels, read_run,
                                    read_topics, write_run)


def write(tmp_path, name, content: bytes | str):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return path


def test_reads_tsv_and_jsonl(tmp_path):
  topics = read_topics(write(tmp_path, "q.tsv", "1\tmoyo wa dziko\n2\twhere is water\n"))
  assert topics == {"1": "moyo wa dziko", "2": "where is water"}
  corpus = read_corpus(write(tmp_path, "c.jsonl",
                             '{"docid": "d1", "title": "T", "text": "body"}\n'
                             '{"_id": "d2", "text": "other"}\n'))
  assert corpus == {"d1": "T body", "d2": "other"}
  qrels = read_qrels(write(tmp_path, "qrels", "1 0 d1 1\n1 0 d2 0\n2 Q0 d2 2\n"), topics=topics)
  assert qrels == {"1": {"d1": 1, "d2": 0}, "2": {"d2": 2}}


def test_run_round_trip(tmp_path):
  run = {"q1": {"a": 1.0, "b": 2.5}, "q2": {"c": -1.0}}
  path = write_run(run, tmp_path / "run.trec")
  assert path.read_text().splitlines()[0] == "q1 Q0 b 1 2.500000 optical_jax"
  assert read_run(path) == run


@pytest.mark.parametrize("reader,name,content,message", [
    (read_topics, "q.tsv", "1\tok\n2 no tab here\n", r"q\.tsv:2: expected 'qid<TAB>text'"),
    (read_topics, "q.tsv", "1\tok\n1\tagain\n", r"q\.tsv:2: duplicate query id '1'"),
    (read_topics, "q.tsv", "1\tok\n2\t   \n", r"q\.tsv:2: query '2' has an empty text"),
    (read_topics, "q.tsv", b"1\tok\n2\tbad \xff byte\n", r"q\.tsv:2: not valid UTF-8 \(byte 0xff"),
    (read_topics, "q.jsonl", '{"qid": "1", "text": "a"}\n{"qid": "2"\n', r"q\.jsonl:2: invalid JSON"),
    (read_corpus, "c.tsv", "d1\ttext\nd1\ttext\n", r"c\.tsv:2: duplicate document id 'd1'"),
    (read_qrels, "qrels", "1 0 d1 1\n1 0 d1\n", r"qrels:2: expected 4 columns"),
    (read_qrels, "qrels", "1 0 d1 x\n", r"qrels:1: relevance 'x' is not an integer"),
    (read_run, "run", "1 Q0 d1 1 0.5 t\n1 Q0 d1 2 0.4 t\n", r"run:2: document 'd1' appears twice"),
])
def test_bad_lines_are_named(tmp_path, reader, name, content, message):
  with pytest.raises(DataFormatError, match=message):
    reader(write(tmp_path, name, content))


def test_qrels_query_absent_from_topics_is_named(tmp_path):
  path = write(tmp_path, "qrels", "1 0 d1 1\n7 0 d1 1\n")
  with pytest.raises(DataFormatError, match=r"qrels:2: query '7' is judged but absent"):
    read_qrels(path, topics={"1": "x"})
