"""Mean tokens per sentence of text files, for throughput figures."""

import gzip
import importlib

import pytest
import tensorflow as tf

from sgmoe.data import DataError
from sgmoe.data import mean_tokens_per_sentence


class CharacterVocabulary:
    """Tokenizes into characters, so piece counts are easy to check."""

    def __init__(self):
        self.calls = 0

    def tokenize(self, lines):
        self.calls += 1
        return tf.ragged.constant([[0] * len(line) for line in lines],
                                  dtype=tf.int32, ragged_rank=1)


@pytest.fixture
def files(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("the cat sat\n\n  \ndogs bark\n")
    second = tmp_path / "b.txt.gz"
    with gzip.open(second, "wt") as file:
        file.write("a\n")
    return str(first), str(second)


def test_words_plus_one_end_token_over_non_blank_lines(files):
    first, second = files
    # (3 + 1), (2 + 1) and (1 + 1) tokens in 3 sentences.
    assert mean_tokens_per_sentence(f"{first},{second}") == pytest.approx(3)
    assert mean_tokens_per_sentence([first], max_sentences=1) == 4


def test_vocabulary_pieces_counted_in_chunks(files, monkeypatch):
    module = importlib.import_module("sgmoe.data.mean_tokens_per_sentence")
    monkeypatch.setattr(module, "_TOKENIZE_CHUNK", 2)
    vocabulary = CharacterVocabulary()
    # Characters: 11, 9 and 1, plus one end token each.
    assert mean_tokens_per_sentence(list(files), vocabulary) == (
        pytest.approx((21 + 3) / 3))
    assert vocabulary.calls == 2
    assert mean_tokens_per_sentence(list(files), vocabulary,
                                    max_sentences=2) == (20 + 2) / 2


def test_no_sentences_and_missing_files(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    assert mean_tokens_per_sentence(str(blank)) == 0.0
    with pytest.raises(DataError, match="no such file"):
        mean_tokens_per_sentence(str(tmp_path / "missing.txt"))
