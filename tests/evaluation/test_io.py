"""Readers name the file and line of every bad input."""

import ir_measures
import numpy as np
import pytest

from optical_jax.evaluation import (DataFormatError, evaluate, read_corpus, read_qrels, read_run,
                                    read_topics, write_qrels, write_run)


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


BOM = "\ufeff"


def test_int_ids_are_read_as_strings(tmp_path):
  corpus = read_corpus(write(tmp_path, "c.jsonl", '{"_id": 17, "title": null, "text": "body"}\n'
                             '{"_id": "d2", "text": "other"}\n'))
  assert corpus == {"17": "body", "d2": "other"}
  assert read_topics(write(tmp_path, "q.jsonl", '{"_id": 3, "text": "a"}\n')) == {"3": "a"}


@pytest.mark.parametrize("reader,content,message", [
    (read_topics, '{"qid": "1", "text": "a"}\n{"qid": "2", "text": 42}\n',
     r"q\.jsonl:2: query text field 'text' must be a string, got 42"),
    (read_topics, '{"qid": "1", "text": ["a", "b"]}\n',
     r"q\.jsonl:1: query text field 'text' must be a string, got \[\"a\", \"b\"\]"),
    (read_topics, '{"qid": "1", "text": null, "query": "a"}\n',
     r"q\.jsonl:1: query text field 'text' must be a string, got null"),
    (read_topics, '{"qid": 1.5, "text": "a"}\n',
     r"q\.jsonl:1: query id field 'qid' must be a string or an integer, got 1.5"),
    (read_topics, '{"qid": null, "_id": "1", "text": "a"}\n',
     r"q\.jsonl:1: query id field 'qid' must be a string or an integer, got null"),
    (read_corpus, '{"_id": "d1", "text": {"body": "x"}}\n',
     r"q\.jsonl:1: text field 'text' must be a string, got \{\"body\": \"x\"\}"),
    (read_corpus, '{"_id": true, "text": "x"}\n',
     r"q\.jsonl:1: document id field '_id' must be a string or an integer, got true"),
    (read_corpus, '{"_id": "d1", "title": 7, "text": "x"}\n',
     r"q\.jsonl:1: title field 'title' must be a string, got 7"),
])
def test_non_string_json_fields_are_named(tmp_path, reader, content, message):
  with pytest.raises(DataFormatError, match=message):
    reader(write(tmp_path, "q.jsonl", content))


@pytest.mark.parametrize("name,content,reader", [
    ("q.tsv", "1\tmoyo wa dziko\n2\twhere is water\n", read_topics),
    ("q.jsonl", '{"qid": "1", "text": "a"}\n{"qid": "2", "text": "b"}\n', read_topics),
    ("c.tsv", "d1\tT\tbody\nd2\tother\n", read_corpus),
    ("c.jsonl", '{"_id": "d1", "text": "body"}\n', read_corpus),
    ("qrels", "1 0 d1 1\n1 0 d2 0\n", read_qrels),
    ("run", "1 Q0 d1 1 0.5 t\n1 Q0 d2 2 0.4 t\n", read_run),
])
def test_a_leading_bom_is_dropped(tmp_path, name, content, reader):
  plain = reader(write(tmp_path, name, content))
  assert reader(write(tmp_path, "bom_" + name, BOM + content)) == plain
  assert all(not key.startswith(BOM) for key in plain)


def test_a_bom_in_topics_is_not_a_qrels_problem(tmp_path):
  topics = read_topics(write(tmp_path, "q.tsv", BOM + "1\tmoyo\n2\tmadzi\n"))
  qrels = read_qrels(write(tmp_path, "qrels", "1 0 d1 1\n2 0 d2 1\n"), topics=topics)
  assert set(qrels) == set(topics) == {"1", "2"}


@pytest.mark.parametrize("bom_in", ["run", "qrels", "both"])
def test_scores_with_a_bom_equal_the_bom_free_files_and_ir_measures(tmp_path, bom_in):
  rng = np.random.default_rng(11)
  run = {f"q{q}": {f"d{d}": float(rng.integers(0, 9)) for d in rng.choice(30, 12, replace=False)}
         for q in range(5)}
  qrels = {qid: {d: int(rng.integers(0, 3)) for d in list(docs)[::3]} for qid, docs in run.items()}
  run_path, qrels_path = write_run(run, tmp_path / "run"), write_qrels(qrels, tmp_path / "qrels")
  bom_run, bom_qrels = tmp_path / "bom_run", tmp_path / "bom_qrels"
  bom_run.write_bytes(BOM.encode() * (bom_in != "qrels") + run_path.read_bytes())
  bom_qrels.write_bytes(BOM.encode() * (bom_in != "run") + qrels_path.read_bytes())
  measures = ["MAP", "nDCG@10", "RR@10"]
  with_bom = evaluate(read_run(bom_run), read_qrels(bom_qrels), measures)
  assert with_bom == evaluate(read_run(run_path), read_qrels(qrels_path), measures)
  expected = ir_measures.calc_aggregate(
      [ir_measures.AP, ir_measures.nDCG @ 10], ir_measures.read_trec_qrels(str(qrels_path)),
      ir_measures.read_trec_run(str(run_path)))
  assert with_bom["MAP"] == pytest.approx(expected[ir_measures.AP], abs=1e-6)
  assert with_bom["nDCG@10"] == pytest.approx(expected[ir_measures.nDCG @ 10], abs=1e-6)


@pytest.mark.parametrize("header", ["qid\tquery", "QID\tQuery", "query_id\ttext", "id\ttext",
                                    "Query_ID\tTEXT"])
def test_a_topics_header_naming_its_columns_is_no_query(tmp_path, header):
  topics = read_topics(write(tmp_path, "q.tsv", f"{header}\n1\tmoyo wa dziko\n2\tmadzi\n"))
  assert topics == {"1": "moyo wa dziko", "2": "madzi"}


def test_only_a_first_line_of_column_names_is_a_header(tmp_path):
  # A first line with one real field is data; a later "id<TAB>text" is a query named "id".
  assert read_topics(write(tmp_path, "a.tsv", "qid\tmoyo\n")) == {"qid": "moyo"}
  assert read_topics(write(tmp_path, "b.tsv", "1\tmoyo\nid\ttext\n")) == {"1": "moyo",
                                                                          "id": "text"}


@pytest.mark.parametrize("header", ["docid\ttext", "DocID\tTitle\tText", "id\ttitle\ttext",
                                    "_id\tcontents"])
def test_a_corpus_header_naming_its_columns_is_no_document(tmp_path, header):
  corpus = read_corpus(write(tmp_path, "c.tsv", f"{header}\nd1\tT\tbody\nd2\tother\n"))
  assert corpus == {"d1": "T body", "d2": "other"}


@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-inf", "-Infinity"])
def test_a_score_that_is_not_finite_is_named(tmp_path, score):
  path = write(tmp_path, "run", f"q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 {score} t\n")
  with pytest.raises(DataFormatError, match=rf"run:2: score '{score}' of document 'd2' for "
                                            r"query 'q1' is not a finite number"):
    read_run(path)


def test_writers_replace_a_file_whole(tmp_path):
  path = write_run({"q1": {"d1": 1.0}}, tmp_path / "runs" / "toy.trec")
  write_run({"q2": {"d2": 2.0}}, path)
  assert read_run(path) == {"q2": {"d2": 2.0}}
  assert [p.name for p in path.parent.iterdir()] == ["toy.trec"]  # no temporary left


@pytest.mark.parametrize("reader,name,content,message", [
    (read_topics, "q.tsv", "1\tok\nq 2\ttext\n", r"q\.tsv:2: query id 'q 2' contains whitespace"),
    (read_topics, "q.jsonl", '{"qid": "q\\n1", "text": "a"}\n',
     r"q\.jsonl:1: query id 'q\\n1' contains whitespace"),
    (read_corpus, "c.jsonl", '{"docid": "d 1", "text": "a"}\n',
     r"c\.jsonl:1: document id 'd 1' contains whitespace"),
    (read_corpus, "c.tsv", "d1\ttext\nd\u00a02\ttext\n",
     r"c\.tsv:2: document id 'd\\xa02' contains whitespace"),  # str.split splits there too
])
def test_ids_with_whitespace_are_refused_naming_the_line(tmp_path, reader, name, content,
                                                         message):
  # Written raw into a run file, such an id would shift every column after it.
  with pytest.raises(DataFormatError, match=message):
    reader(write(tmp_path, name, content))


def test_a_line_longer_than_the_cap_is_named_without_reading_it_whole(tmp_path):
  from optical_jax.files.textfiles import MAX_LINE_BYTES
  assert MAX_LINE_BYTES == 1 << 20
  at_cap = write(tmp_path, "c.tsv", "d1\t" + "x" * (MAX_LINE_BYTES - 3) + "\nd2\ty\n")
  assert len(read_corpus(at_cap)["d1"]) == MAX_LINE_BYTES - 3  # exactly the cap still reads
  over = write(tmp_path, "over.tsv", "d0\tok\nd1\t" + "x" * MAX_LINE_BYTES)  # no newline
  with pytest.raises(DataFormatError, match=r"over\.tsv:2: line longer than 1 MiB"):
    read_corpus(over)


def test_deeply_nested_json_is_a_one_line_error(tmp_path):
  path = write(tmp_path, "c.jsonl", '{"docid": "d1", "text": "a"}\n' + "[" * 100_000 + "\n")
  with pytest.raises(DataFormatError, match=r"c\.jsonl:2: JSON nested too deeply"):
    read_corpus(path)
