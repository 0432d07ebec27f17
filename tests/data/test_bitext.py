"""Reading bitext: bad lines named, JSON fields that are not text refused, id columns caught,
a byte-order mark ignored, a header line skipped, a student column in the teacher's language
warned about."""

import pytest

from optical_jax.data.bitext import iter_raw_pairs, read_pairs, student_language_warning
from optical_jax.files.textfiles import DataFormatError


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


@pytest.mark.parametrize("header", ["ny\ten", "src\ttgt", "student\tteacher\tverse",
                                    "eng_Latn\tnya_Latn"])
def test_a_header_line_naming_the_columns_is_skipped_with_a_note(tmp_path, caplog, header):
  path = tmp_path / f"bitext{len(header)}.tsv"
  path.write_text(f"{header}\nYesu analira.\tJesus wept.\nne\tand\n")
  with caplog.at_level("INFO", logger="optical_jax"):
    assert read_pairs(path, ("student", "teacher")) == [("Yesu analira.", "Jesus wept."),
                                                        ("ne", "and")]  # later lines are pairs
    assert [p for p in iter_raw_pairs([path], ("student", "teacher"))] == [
        ("Yesu analira.", "Jesus wept."), ("ne", "and")]
  noted = [r.getMessage() for r in caplog.records if "header" in r.getMessage()]
  assert noted == [f"{path}:1: skipped a header line "
                   f"({', '.join(header.split(chr(9))[:2])}), not a pair"]  # once per file


def test_a_first_pair_is_not_taken_for_a_header(tmp_path):
  path = tmp_path / "bitext.tsv"
  path.write_text("madzi\twater\nYesu analira.\tJesus wept.\n")
  assert read_pairs(path, ("student", "teacher"))[0] == ("madzi", "water")


def test_a_student_column_in_the_teachers_language_is_warned_about_with_numbers(minilm_dir):
  from transformers import AutoTokenizer
  vocabulary = AutoTokenizer.from_pretrained(str(minilm_dir)).get_vocab()
  pairs = [("Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.",
            "In the beginning God created the heaven and the earth."),
           ("Ndipo Mulungu anati, Pakhale kuwala; ndipo kudali kuwala.",
            "And God said, Let there be light: and there was light.")]
  assert student_language_warning(pairs, vocabulary) is None
  swapped = student_language_warning([(t, s) for s, t in pairs], vocabulary)
  assert swapped.startswith("the student column looks like the teacher's language: in the "
                            "first 2 pairs, 100% of its words are whole words of the teacher's "
                            "vocabulary (the teacher column: "), swapped
  assert "0% of the pairs are the same text on both sides. Are the columns swapped?" in swapped
  copies = student_language_warning([(s, s) for s, _ in pairs], vocabulary)
  assert "and 100% of the pairs are the same text on both sides" in copies


def test_an_overlong_or_deeply_nested_training_line_is_named(tmp_path):
  from optical_jax.files.textfiles import MAX_LINE_BYTES
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
