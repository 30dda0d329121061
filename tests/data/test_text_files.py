"""File patterns and malformed input: one DataError that names the file."""

import gzip
import os

import numpy as np
import pytest

from sgmoe.data import DataError
from sgmoe.data import SubwordVocabulary
from sgmoe.data import WordVocabulary
from sgmoe.data import check_text_files
from sgmoe.data import count_lines
from sgmoe.data import expand_file_patterns
from sgmoe.data import language_model_dataset
from sgmoe.data import read_text_lines
from sgmoe.data import translation_dataset
from tests.data.files import write_text


def test_expand_sorts_each_glob_and_keeps_pattern_order(tmp_path):
    for name in ["b.en", "a.en", "c.en.gz", "b.de", "a.de"]:
        write_text(tmp_path / name, ["x"])
    os.mkdir(tmp_path / "z.en")  # a directory matching the glob is ignored
    files = expand_file_patterns(
        f"{tmp_path}/*.en*, {tmp_path}/a.de,{tmp_path}/*.de")
    assert [os.path.basename(f) for f in files] == [
        "a.en", "b.en", "c.en.gz", "a.de", "b.de"]
    # A list of patterns, each possibly comma-separated, is the same.
    assert expand_file_patterns(
        [f"{tmp_path}/*.en*", f"{tmp_path}/a.de,{tmp_path}/*.de"]) == files


@pytest.mark.parametrize("pattern, message", [
    ("missing.txt", "missing.txt: no such file"),
    ("nothing-*.txt", "nothing-*.txt: no file matches this pattern"),
    ("subdir", "subdir: not a file"),
])
def test_expand_errors_name_the_pattern(tmp_path, pattern, message):
    os.mkdir(tmp_path / "subdir")
    with pytest.raises(DataError) as error:
        expand_file_patterns(str(tmp_path / pattern))
    assert str(error.value) == f"{tmp_path}/{message}"
    with pytest.raises(DataError, match="no file pattern"):
        expand_file_patterns(" , ")


def test_summary_counts_lines_and_line_endings(tmp_path):
    path = write_text(tmp_path / "a.txt", b"one two\r\n\n  \t\nlast")
    lines = list(read_text_lines(path))
    assert lines == ["one two", "", "  \t", "last"]
    [summary] = check_text_files([path])
    assert (summary.lines, summary.blank_lines, summary.usable_lines) == (
        4, 2, 2)


def test_line_length_limit_is_in_bytes_without_the_line_ending(tmp_path):
    path = write_text(tmp_path / "a.txt", ["é" * 5, "abcdefghij\r"])
    assert list(read_text_lines(path, max_line_length=10)) == [
        "é" * 5, "abcdefghij"]
    with pytest.raises(DataError, match=r"a.txt:1: line longer than "
                       r"max_line_length=9 bytes"):
        list(read_text_lines(path, max_line_length=9))


# Each case: file name, content, the message after "<path>".
MALFORMED = {
    "empty": ("empty.txt", b"", ": empty file"),
    "empty_gzip": ("empty.txt.gz", b"", ": empty file"),
    "blank": ("blank.txt", b"\n \n\t\n", ": holds only blank lines"),
    "not_utf8": ("latin1.txt", "gut\nGrüße aus Köln\n".encode("latin-1"),
                 ":2: not valid UTF-8 (byte 0xfc at byte 3 of the line; skip "
                 "such lines with on_malformed='skip')"),
    "too_long": ("long.txt.gz", b"short\n" + b"x " * 40 + b"\nshort\n",
                 ":2: line longer than max_line_length=50 bytes (raise the "
                 "limit, or skip such lines with on_malformed='skip')"),
}


def write_malformed(tmp_path, case):
    name, content, message = MALFORMED[case]
    path = str(tmp_path / name)
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as file:
            file.write(content)
    else:
        write_text(path, content)
    return path, path + message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_entry_point_raises_one_line_naming_the_file(
        tmp_path, case, ding_vocabulary):
    path, expected = write_malformed(tmp_path, case)
    good = write_text(tmp_path / "good.txt", ["a b", "c d", "e f"])
    vocabulary = WordVocabulary(["a", "b"])
    calls = {
        "check_text_files": lambda: check_text_files([path],
                                                     max_line_length=50),
        "WordVocabulary.build": lambda: WordVocabulary.build(
            f"{good},{path}", max_line_length=50),
        "language_model_dataset": lambda: language_model_dataset(
            path, vocabulary, 2, 8, max_line_length=50),
        "translation_dataset (source)": lambda: translation_dataset(
            path, good, ding_vocabulary, 2, 8, max_line_length=50),
        "translation_dataset (target)": lambda: translation_dataset(
            good, path, ding_vocabulary, 2, 8, max_line_length=50),
        "SubwordVocabulary.train": lambda: SubwordVocabulary.train(
            [good, path], vocabulary_size=40, max_line_length=50,
            num_threads=1),
    }
    for name, call in calls.items():
        with pytest.raises(DataError) as error:
            call()
        assert str(error.value) == expected, name
        assert "\n" not in str(error.value)


def test_unreadable_gzip_names_the_file(tmp_path):
    plain = str(tmp_path / "plain.gz")
    with open(plain, "wb") as file:
        file.write(b"not gzip\n")
    with pytest.raises(DataError, match=r"plain.gz: cannot read: Not a "
                       r"gzipped file"):
        check_text_files([plain])
    whole = gzip.compress(b"one line\n" * 1000)
    truncated = str(tmp_path / "truncated.gz")
    with open(truncated, "wb") as file:
        file.write(whole[:len(whole) // 2])
    with pytest.raises(DataError, match=r"truncated.gz: cannot read: "
                       r"Compressed file ended"):
        check_text_files([truncated])


def test_count_lines_counts_every_line_up_to_the_limit(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_bytes(b"one\n\n  \nfour")  # blank lines count, no final \n
    with gzip.open(tmp_path / "b.txt.gz", "wb") as file:
        file.write(b"x\n" * 7)
    patterns = f"{plain},{tmp_path / 'b.txt.gz'}"
    assert count_lines(patterns) == 4 + 7
    assert count_lines(patterns, limit=6) == 6
    assert count_lines(patterns, limit=100) == 11
    with pytest.raises(DataError, match="c.txt"):
        count_lines(str(tmp_path / "c.txt"))
    (tmp_path / "bad.gz").write_bytes(b"not gzip\n")
    with pytest.raises(DataError, match=r"bad.gz: cannot read"):
        count_lines(str(tmp_path / "bad.gz"))


def test_skip_policy_counts_and_the_pipeline_skips_the_same_lines(tmp_path):
    path = write_text(tmp_path / "mixed.txt", (
        b"a b\n" + b"a \xff b\n" + b"b " * 30 + b"\n" + b"b a\n"
        # Overlong and surrogate encodings are not UTF-8 in Python nor TF;
        # U+FFFD and U+0000 are.
        + b"a \xc0\xaf\n" + b"a \xed\xa0\x80\n" + "a \ufffd\n".encode()
        + b"b \x00\n" + b"x" * 50 + b"\n"))
    [summary] = check_text_files([path], max_line_length=50,
                                 on_malformed="skip")
    assert (summary.lines, summary.skipped_not_utf8,
            summary.skipped_too_long, summary.usable_lines) == (9, 3, 1, 5)
    assert list(read_text_lines(path, 50, "skip")) == [
        "a b", "b a", "a \ufffd", "b \x00", "x" * 50]

    vocabulary = WordVocabulary(["a", "b"])
    dataset = language_model_dataset(
        path, vocabulary, batch_size=10, max_length=60,
        bucket_boundaries=[60], pad_to_bucket_length=False,
        max_line_length=50, on_malformed="skip")
    [(inputs, _)] = list(dataset.as_numpy_iterator())
    unk = vocabulary.unk_id
    # Rows sorted by length, shortest first.
    np.testing.assert_array_equal(inputs, [
        [1, unk, 0], [1, 4, 5], [1, 5, 4], [1, 4, unk], [1, 5, unk]])


def test_skip_policy_still_raises_when_nothing_is_left(tmp_path):
    path = write_text(tmp_path / "bad.txt", b"\xff\n\xfe\n")
    with pytest.raises(DataError, match=r"bad.txt: no usable line \(2 of 2 "
                       r"lines skipped as malformed\)"):
        check_text_files([path], on_malformed="skip")


def test_policy_and_limit_arguments_are_checked(tmp_path):
    path = write_text(tmp_path / "a.txt", ["a"])
    with pytest.raises(ValueError, match="`on_malformed` must be one of"):
        check_text_files([path], on_malformed="ignore")
    with pytest.raises(ValueError, match="`max_line_length` must be a "
                       "positive integer"):
        check_text_files([path], max_line_length=0)
