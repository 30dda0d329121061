"""WordVocabulary: counts, the 1B Word special tokens, save/load, TF lookup."""

import collections
import gzip
import os

import numpy as np
import pytest

from sgmoe.data import DataError
from sgmoe.data import WordVocabulary
from tests.data.files import write_text

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "data")


def test_build_orders_words_by_count_after_the_special_tokens(tmp_path):
    path = write_text(tmp_path / "train.txt", [
        "the cat sat on the mat", "the dog sat", "<S> a cat </S> <UNK>"])
    vocabulary = WordVocabulary.build(path)
    # the: 3; cat, sat: 2 (ties by code point); a, dog, mat, on: 1. The
    # special tokens in the text are not counted as words.
    assert vocabulary.tokens == [
        "<pad>", "<S>", "</S>", "<UNK>",
        "the", "cat", "sat", "a", "dog", "mat", "on"]
    assert (vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id,
            vocabulary.unk_id) == (0, 1, 2, 3)
    assert [vocabulary.token_to_id(t) for t in ["<S>", "</S>", "<UNK>",
                                                "cat", "zebra"]] == [
        1, 2, 3, 5, 3]
    assert vocabulary.size == len(vocabulary) == 11

    assert WordVocabulary.build(path, min_count=2).words == [
        "the", "cat", "sat"]
    assert WordVocabulary.build(path, vocabulary_size=6).words == [
        "the", "cat"]


def test_count_words_over_several_files(tmp_path):
    first = write_text(tmp_path / "a.txt.gz", ["x y", "y"])
    write_text(tmp_path / "b.txt", ["y z"])
    counts = WordVocabulary.count_words(f"{first},{tmp_path}/b.*")
    assert counts == {"x": 1, "y": 3, "z": 1}


def test_brown_vocabulary_matches_an_independent_count():
    path = os.path.join(DATA_DIR, "brown.valid.txt.gz")
    vocabulary = WordVocabulary.build(path, vocabulary_size=1000)
    with gzip.open(path, "rt", encoding="utf-8") as text:
        counts = collections.Counter(word for line in text
                                     for word in line.split())
    expected = [w for w, _ in sorted(counts.items(),
                                     key=lambda item: (-item[1], item[0]))]
    assert vocabulary.size == 1000
    assert vocabulary.words == expected[:996]
    assert vocabulary.words[:3] == ["the", ",", "."]


def test_save_and_load_round_trip(tmp_path):
    vocabulary = WordVocabulary(["the", "cat", "Straße", "a/b"])
    path = vocabulary.save(str(tmp_path / "model"))
    assert path == str(tmp_path / "model" / "vocabulary.txt")
    with open(path, encoding="utf-8") as file:
        assert file.read() == (
            "<pad>\n<S>\n</S>\n<UNK>\nthe\ncat\nStraße\na/b\n")
    for where in (str(tmp_path / "model"), path):
        loaded = WordVocabulary.load(where)
        assert loaded.tokens == vocabulary.tokens
    np.testing.assert_array_equal(
        loaded.encode(["the Straße a/b dog"]).to_list(), [[4, 6, 7, 3]])


@pytest.mark.parametrize("content, message", [
    (b"<S>\n</S>\n<UNK>\nthe\n", r"vocabulary.txt: not a WordVocabulary "
     r"file: it must start with the lines <pad> <S> </S> <UNK>, found <S> "
     r"</S> <UNK> the"),
    (b"<pad>\n<S>\n</S>\n<UNK>\nthe\ncat\nthe\n",
     r"vocabulary.txt:7: token 'the' is a special token or comes twice"),
    (b"<pad>\n<S>\n</S>\n<UNK>\nthe cat\n",
     r"vocabulary.txt:5: token 'the cat' holds whitespace"),
    (b"", r"vocabulary.txt: not a WordVocabulary file: .* found nothing"),
])
def test_load_rejects_malformed_files_by_line(tmp_path, content, message):
    write_text(tmp_path / "vocabulary.txt", content)
    with pytest.raises(DataError, match=message):
        WordVocabulary.load(str(tmp_path))
    with pytest.raises(DataError, match=r"nowhere/vocabulary.txt: no such "
                       r"file"):
        WordVocabulary.load(str(tmp_path / "nowhere" / "vocabulary.txt"))


def test_encode_splits_at_the_same_whitespace_as_str_split():
    # tensorflow-text alone would cut U+3000 and U+0085 mid-character and
    # not split at U+001C; the pipeline maps them all to spaces first.
    line = "a\u3000b\x85c\x1cd\u00a0e\tf g\u200bh"
    words = line.split()
    vocabulary = WordVocabulary(words)
    assert vocabulary.encode([line]).to_list() == [list(range(4, 4 + 7))]
    assert words[-1] == "g\u200bh"  # zero-width space is not whitespace


def test_decode_cuts_at_the_end_token_and_drops_padding():
    vocabulary = WordVocabulary(["the", "cat"])
    text = vocabulary.decode(np.array([[1, 4, 5, 3, 2, 4, 0],
                                       [1, 5, 0, 0, 0, 0, 0]]))
    assert text.numpy().tolist() == [b"the cat <UNK>", b"cat"]


@pytest.mark.parametrize("kwargs, message", [
    ({"vocabulary_size": 4},
     "`vocabulary_size` must be None or an integer larger than 4"),
    ({"min_count": 0}, "`min_count` must be a positive integer"),
])
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WordVocabulary.from_counts({"a": 1}, **kwargs)
    with pytest.raises(ValueError, match="'a' is a special token or comes "
                       "twice"):
        WordVocabulary(["a", "a"])
    with pytest.raises(ValueError, match="'<UNK>' is a special token"):
        WordVocabulary(["<UNK>"])
