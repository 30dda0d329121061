"""Paragraph-per-line text: sentence splitting in every LM reader, and
skipped malformed lines, counted, in every reader a script uses."""

import pytest

from sgmoe.data import DataError
from sgmoe.data import WordVocabulary
from sgmoe.data import check_text_files
from sgmoe.data import language_model_dataset
from sgmoe.data import mean_tokens_per_sentence
from sgmoe.data import read_sentence_pairs
from sgmoe.data import split_into_sentences
from tests.data.files import write_text

# A paragraph per line; "happy.It" has a boundary without a space. Line 4
# is longer than 50 bytes, line 5 is not UTF-8.
PARAGRAPHS = ("The cat sat . It was happy.It left !\n"
              "\n"
              "One more sentence here .\n").encode() + (
              b"x " * 30 + b"\n" + b"bad \xff .\n")
SENTENCES = ["The cat sat .", "It was happy.", "It left !",
             "One more sentence here ."]
SKIP = {"max_line_length": 50, "on_malformed": "skip"}


def test_split_into_sentences_keeps_abbreviations_and_numbers():
    assert split_into_sentences(
        "  Mr. Smith paid 3.5 dollars . The U.S. grew.Then it fell ! ") == [
        "Mr. Smith paid 3.5 dollars .", "The U.S. grew.", "Then it fell !"]
    assert split_into_sentences(" \t") == []
    with pytest.raises(ValueError, match="`text` must be a str"):
        split_into_sentences(b"bytes")


def test_every_reader_sees_the_same_sentences(tmp_path):
    path = write_text(tmp_path / "paragraphs.txt", PARAGRAPHS)
    [summary] = check_text_files([path], **SKIP)
    assert (summary.lines, summary.blank_lines, summary.skipped_too_long,
            summary.skipped_not_utf8, summary.usable_lines) == (5, 1, 1, 1, 2)

    vocabulary = WordVocabulary.build(path, split_sentences=True, **SKIP)
    # Counted per sentence: "happy." and a second "It", not "happy.It".
    assert vocabulary.words == [
        ".", "It", "!", "One", "The", "cat", "happy.", "here", "left",
        "more", "sat", "sentence", "was"]
    assert "happy.It" in WordVocabulary.build(path, **SKIP).words

    dataset = language_model_dataset(
        path, vocabulary, batch_size=10, max_length=8,
        pad_to_bucket_length=False, split_sentences=True, **SKIP)
    [(inputs, targets)] = list(dataset)
    # One example per sentence, stable-sorted by length.
    assert [text.decode() for text in vocabulary.decode(inputs).numpy()] \
        == [SENTENCES[i] for i in (1, 2, 0, 3)]
    assert targets.numpy()[3].tolist() == [
        vocabulary.token_to_id(word) for word in SENTENCES[3].split()] + [
        vocabulary.eos_id]

    # 15 words and 4 end tokens in 4 sentences; unsplit, 14 + 2 in 2.
    assert mean_tokens_per_sentence(path, split_sentences=True,
                                    **SKIP) == 19 / 4
    assert mean_tokens_per_sentence(path, **SKIP) == 16 / 2


def test_readers_raise_on_malformed_lines_unless_told_to_skip(tmp_path):
    path = write_text(tmp_path / "paragraphs.txt", PARAGRAPHS)
    message = (r"paragraphs.txt:4: line longer than max_line_length=50 "
               r"bytes \(raise the limit, or skip such lines with "
               r"on_malformed='skip'\)")
    with pytest.raises(DataError, match=message):
        mean_tokens_per_sentence(path, max_line_length=50,
                                 split_sentences=True)
    with pytest.raises(DataError, match=r"paragraphs.txt:5: not valid UTF-8"):
        WordVocabulary.build(path, split_sentences=True)


def test_sentence_pairs_skip_a_malformed_side_and_stay_aligned(tmp_path):
    source = write_text(tmp_path / "pairs.de",
                        b"a b\n" + b"x" * 60 + b"\nc d\ne f\n")
    target = write_text(tmp_path / "pairs.en", b"A B\nC D\n\xff\nG H\n")
    assert read_sentence_pairs([source], [target], **SKIP) == [
        ("a b", "A B"), ("e f", "G H")]
    with pytest.raises(DataError, match=r"pairs.de:2: line longer than"):
        read_sentence_pairs([source], [target], max_line_length=50)


def test_split_sentences_must_be_a_bool(tmp_path):
    path = write_text(tmp_path / "a.txt", ["a b"])
    for call in (
            lambda: language_model_dataset(path, WordVocabulary(["a"]), 2, 8,
                                           split_sentences="yes"),
            lambda: WordVocabulary.build(path, split_sentences="yes"),
            lambda: mean_tokens_per_sentence(path, split_sentences="yes")):
        with pytest.raises(ValueError, match="`split_sentences` must be "
                           "True or False, received split_sentences='yes'"):
            call()
