"""SubwordVocabulary: learned with sentencepiece, used by tensorflow-text."""

import gzip
import itertools
import unicodedata

import numpy as np
import pytest

from sgmoe.data import DataError
from sgmoe.data import SubwordVocabulary
from tests.data.conftest import data_file
from tests.data.files import write_text


def first_lines(name, count):
    with gzip.open(data_file(name), "rt", encoding="utf-8") as text:
        return [line.rstrip("\n") for line in itertools.islice(text, count)]


VALID_FILES = ["ding.de-en.valid.de.gz", "ding.de-en.valid.en.gz",
               "libreoffice.en-fr.valid.fr.gz"]


def test_special_ids_and_size(ding_vocabulary):
    assert ding_vocabulary.size == len(ding_vocabulary) == 1000
    assert (ding_vocabulary.pad_id, ding_vocabulary.unk_id,
            ding_vocabulary.bos_id, ding_vocabulary.eos_id) == (0, 1, 2, 3)
    assert ding_vocabulary.id_to_piece([0, 1, 2, 3]).numpy().tolist() == [
        b"<pad>", b"<unk>", b"<s>", b"</s>"]


def test_tensorflow_text_ids_match_the_sentencepiece_package(ding_vocabulary):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(
        model_proto=ding_vocabulary.model_proto)
    lines = first_lines("ding.de-en.valid.de.gz", 50)
    assert ding_vocabulary.tokenize(lines).to_list() == [
        processor.encode(line) for line in lines]


@pytest.mark.parametrize("name", VALID_FILES)
def test_round_trip_gives_the_nfkc_normalised_text(ding_vocabulary, name):
    lines = first_lines(name, 200)
    back = ding_vocabulary.detokenize(ding_vocabulary.tokenize(lines))
    back = [text.decode("utf-8") for text in back.numpy()]
    # The documented normalisation: NFKC, whitespace runs collapsed.
    expected = [" ".join(unicodedata.normalize("NFKC", line).split())
                for line in lines]
    assert back == expected
    assert [ding_vocabulary.normalize(line) for line in lines] == expected
    # Byte fallback: nothing became <unk>, even in French.
    assert ding_vocabulary.unk_id not in np.concatenate(
        ding_vocabulary.tokenize(lines).to_list())


def test_identity_normalisation_round_trips_exactly(tmp_path):
    vocabulary = SubwordVocabulary.train(
        [data_file("ding.de-en.valid.de.gz"),
         data_file("ding.de-en.valid.en.gz")],
        vocabulary_size=500, normalization="identity", num_threads=1)
    lines = (first_lines("ding.de-en.valid.de.gz", 100)
             + ["Größe … ﬁnal 😀 ＡＢＣ", "漢字 are bytes here"])
    back = vocabulary.detokenize(vocabulary.tokenize(lines)).numpy()
    assert [text.decode("utf-8") for text in back] == lines


def test_detokenize_cuts_at_the_end_of_sentence(ding_vocabulary):
    ids = ding_vocabulary.tokenize(["Guten Morgen!", "Danke."]).to_list()
    batch = np.zeros((2, 12), np.int32)
    batch[0, :len(ids[0]) + 2] = [2] + ids[0] + [3]
    batch[1, :len(ids[1]) + 2] = ids[1] + [3] + ids[0][:1]
    assert ding_vocabulary.detokenize(batch).numpy().tolist() == [
        b"Guten Morgen!", b"Danke."]


def test_save_and_load_round_trip(ding_vocabulary, tmp_path):
    path = ding_vocabulary.save(str(tmp_path / "model"))
    assert path == str(tmp_path / "model" / "subwords.model")
    for where in (str(tmp_path / "model"), path):
        loaded = SubwordVocabulary.load(where)
        assert loaded.model_proto == ding_vocabulary.model_proto
    lines = first_lines("ding.de-en.valid.en.gz", 20)
    assert loaded.tokenize(lines).to_list() == \
        ding_vocabulary.tokenize(lines).to_list()


def test_load_and_train_errors_name_the_file(tmp_path):
    write_text(tmp_path / "subwords.model", b"not a model")
    with pytest.raises(DataError, match=r"subwords.model: `model_proto` is "
                       r"not a SentencePiece model"):
        SubwordVocabulary.load(str(tmp_path))
    with pytest.raises(DataError, match=r"nowhere: no such file"):
        SubwordVocabulary.load(str(tmp_path / "nowhere"))
    small = write_text(tmp_path / "small.txt", ["ab ba", "abba"])
    with pytest.raises(DataError, match=(
            r"small.txt: cannot learn 300 subwords: Vocabulary size too "
            r"high \(300\)\. Please set it to a value <= 9\.$")):
        SubwordVocabulary.train(small, vocabulary_size=300,
                                byte_fallback=False, num_threads=1)
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        SubwordVocabulary.train(small, normalization="nfd")
