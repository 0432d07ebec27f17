"""Reading bitext: bad lines named, JSON fields that are not text refused, id columns caught,
a byte-order mark ignored."""

import pytest

from optical_jax.data.bitext import read_pairs
from optical_jax.textfiles import DataFormatError


def test_read_pairs_names_bad_lines(tmp_path):
  path = tmp_path / "bitext.tsv"
  path.write_text("a\tb\nonly one column\n")
  with pytest.raises(DataFormatError, match=r"bitext\.tsv:2: expected 2 tab-separated"):
    read_pairs(path, ("student", "teacher"))
  path = tmp_path / "bitext.jsonl"
  path.write_text('{"so": "x", "en": "y"}\n{"so": "x", "en": ""}\n')
  with pytest.raises(DataFormatError, match=r"bitext\.jsonl:2: empty en"):
    read_pairs(path, ("so", "en"))


@pytest.mark.parametrize("value, kind", [("null", "null"), ("3", "int"), ('["a"]', "list")])
def test_json_fields_that_are_not_text_are_named(tmp_path, value, kind):
  path = tmp_path / "bitext.jsonl"
  path.write_text('{"so": "x", "en": "y"}\n{"so": %s, "en": "y"}\n' % value)
  with pytest.raises(DataFormatError, match=rf"bitext\.jsonl:2: field 'so' must be a string, "
                     rf"got {kind}"):
    read_pairs(path, ("so", "en"))


def test_an_id_column_first_is_refused_naming_the_order(tmp_path):
  path = tmp_path / "bitext.tsv"
  path.write_text("".join(f"{i}\tMawu a {i}\tWords {i}\n" for i in range(5)))
  with pytest.raises(DataFormatError, match=r"bitext\.tsv:1: the first column looks like ids "
                     r"\('0', \.\.\.\), not student text"):
    read_pairs(path, ("student", "teacher"))
  # Ids last (as the Bible build writes them) are fine, and so is text with numbers.
  path.write_text("Yesu analira.\tJesus wept.\t43.11.35\n2024\tThe year 2024.\n")
  assert read_pairs(path, ("student", "teacher")) == [("Yesu analira.", "Jesus wept."),
                                                      ("2024", "The year 2024.")]


def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path):
  path = tmp_path / "bitext.tsv"
  path.write_bytes("\ufeffYesu analira.\tJesus wept.\n".encode("utf-8"))
  assert read_pairs(path, ("student", "teacher")) == [("Yesu analira.", "Jesus wept.")]


def test_an_overlong_or_deeply_nested_training_line_is_named(tmp_path):
  from optical_jax.textfiles import MAX_LINE_BYTES
  endless = tmp_path / "train.tsv"
  endless.write_text("Yesu analira.\tJesus wept.\n" + "a b\t" * (MAX_LINE_BYTES // 4 + 1))
  with pytest.raises(DataFormatError, match=r"train\.tsv:2: line longer than 1 MiB"):
    read_pairs(endless, ("student", "teacher"))
  nested = tmp_path / "train.jsonl"
  nested.write_text('{"student": "Yesu analira.", "teacher": "Jesus wept."}\n'
                    + '{"student": ' + "[" * 100_000 + "\n")
  with pytest.raises(DataFormatError, match=r"train\.jsonl:2: JSON nested too deeply"):
    read_pairs(nested, ("student", "teacher"))


def test_a_hub_dataset_is_read_without_running_repository_code(monkeypatch):
  import sys
  import types
  from optical_jax.data.bitext import read_hf_dataset
  calls = []

  def load_dataset(*args, **kwargs):
    calls.append((args, kwargs))
    return [{"translation": {"so": " Waa maxay? ", "en": "What is it?"}}]

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  rows = read_hf_dataset("org/pairs", ("translation.so", "translation.en"), config="so-en",
                         revision="a" * 40)
  assert rows == [("Waa maxay?", "What is it?")]
  assert calls == [(("org/pairs", "so-en"), dict(split="train", streaming=False,
                                                 revision="a" * 40, trust_remote_code=False))]
