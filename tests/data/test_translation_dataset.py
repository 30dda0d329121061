"""translation_dataset: BOS/EOS placement, aligned pairs, line-count errors."""

import collections
import gzip
import itertools
import unicodedata

import numpy as np
import pytest

from sgmoe.data import DataError
from sgmoe.data import translation_dataset
from tests.data.conftest import data_file
from tests.data.files import write_text


def normalised(line):
    return " ".join(unicodedata.normalize("NFKC", line).split())


def head(name, count):
    with gzip.open(data_file(name), "rt", encoding="utf-8") as text:
        return [line.rstrip("\n") for line in itertools.islice(text, count)]


def test_bos_eos_and_padding_of_a_hand_made_pair_file(tmp_path,
                                                      ding_vocabulary):
    german, english = ["Danke.", "Guten Morgen!"], ["Thanks.", "Good morning!"]
    source = write_text(tmp_path / "a.de", german)
    target = write_text(tmp_path / "a.en", english)
    dataset = translation_dataset(source, target, ding_vocabulary,
                                  batch_size=2, max_length=16,
                                  bucket_boundaries=[16])
    [((source_ids, target_inputs), target_outputs)] = list(
        dataset.as_numpy_iterator())
    tokenize = lambda lines: ding_vocabulary.tokenize(lines).to_list()
    bos, eos = ding_vocabulary.bos_id, ding_vocabulary.eos_id
    # The shorter pair first: a batch's rows are sorted by length.
    for row, (s, t) in enumerate(zip(tokenize(german), tokenize(english))):
        expected_source = s + [eos]
        expected_inputs = [bos] + t
        expected_outputs = t + [eos]
        # All three padded with 0 to the bucket length 16.
        for got, want in [(source_ids, expected_source),
                          (target_inputs, expected_inputs),
                          (target_outputs, expected_outputs)]:
            np.testing.assert_array_equal(
                got[row], want + [0] * (16 - len(want)))
    assert source_ids.dtype == target_outputs.dtype == np.int32


def test_every_bundled_pair_comes_out_aligned(ding_vocabulary):
    source_name, target_name = ("libreoffice.en-de.valid.en.gz",
                                "libreoffice.en-de.valid.de.gz")
    dataset = translation_dataset(
        data_file(source_name), data_file(target_name), ding_vocabulary,
        batch_size=32, max_length=64, shuffle=True, seed=3)
    pairs = collections.Counter()
    for (source_ids, target_inputs), target_outputs in \
            dataset.as_numpy_iterator():
        assert source_ids.shape == target_inputs.shape == \
            target_outputs.shape
        assert (target_inputs[:, 0] == ding_vocabulary.bos_id).all()
        words = target_inputs[:, 1:] != 0
        np.testing.assert_array_equal(target_inputs[:, 1:][words],
                                      target_outputs[:, :-1][words])
        for ids in (source_ids, target_outputs):
            assert ((ids == ding_vocabulary.eos_id).sum(axis=1) == 1).all()
        sources = ding_vocabulary.detokenize(source_ids).numpy()
        targets = ding_vocabulary.detokenize(target_outputs).numpy()
        pairs.update(zip((s.decode() for s in sources),
                         (t.decode() for t in targets)))
    # Exactly the file pairs that fit max_length, text NFKC-normalised.
    expected = collections.Counter()
    for source, target in zip(head(source_name, 10_000),
                              head(target_name, 10_000)):
        lengths = [len(ids) + 1 for ids in
                   ding_vocabulary.tokenize([source, target]).to_list()]
        if max(lengths) <= 64:
            expected[normalised(source), normalised(target)] += 1
    assert pairs == expected
    assert 1000 < sum(pairs.values()) < 1745  # some pairs are too long


def test_line_and_file_counts_must_match(tmp_path, ding_vocabulary):
    source = write_text(tmp_path / "a.de", ["Eins.", "Zwei.", "Drei."])
    target = write_text(tmp_path / "a.en", ["One.", "Two."])
    with pytest.raises(DataError) as error:
        translation_dataset(source, target, ding_vocabulary, 2, 8)
    assert str(error.value) == (
        f"{source}: 3 lines, but {target}: 2 lines (parallel files must be "
        "line-aligned)")
    other = write_text(tmp_path / "b.de", ["Vier."])
    with pytest.raises(DataError, match=r"2 source files, but .*: 1 target "
                       r"files"):
        translation_dataset(f"{tmp_path}/*.de", target, ding_vocabulary, 2, 8)
    del other


def test_a_repeated_stream_without_a_fitting_pair_is_an_error(
        tmp_path, ding_vocabulary):
    long = " ".join(["Donaudampfschifffahrtsgesellschaft"] * 2)
    source = write_text(tmp_path / "a.de", [long, ""])
    target = write_text(tmp_path / "a.en", ["Short.", "Blank source."])
    with pytest.raises(DataError, match=r"a\.de, .*a\.en: no example with "
                       r"at most max_length=8 tokens"):
        translation_dataset(source, target, ding_vocabulary, 2, 8,
                            shuffle=True, repeat=True)
    # The same pair fits a longer limit: the stream repeats it.
    dataset = translation_dataset(source, target, ding_vocabulary, 2, 64,
                                  repeat=True)
    (source_ids, _), _ = next(dataset.as_numpy_iterator())
    assert (source_ids[0] == source_ids[1]).all()


def test_malformed_or_blank_side_drops_the_whole_pair(tmp_path,
                                                      ding_vocabulary):
    source = write_text(tmp_path / "a.de",
                        b"Eins.\nZwei \xff.\nDrei.\n\nF\xc3\xbcnf.\n")
    target = write_text(tmp_path / "a.en", b"One.\nTwo.\nThree \xfe.\n"
                        b"Four.\nFive.\n")
    dataset = translation_dataset(source, target, ding_vocabulary, 8, 16,
                                  on_malformed="skip")
    [((source_ids, _), target_outputs)] = list(dataset.as_numpy_iterator())
    assert ding_vocabulary.detokenize(source_ids).numpy().tolist() == [
        b"Eins.", "Fünf.".encode()]
    assert ding_vocabulary.detokenize(target_outputs).numpy().tolist() == [
        b"One.", b"Five."]


def test_sharding_and_resuming_pairs(ding_vocabulary):
    names = (data_file("ding.de-en.valid.de.gz"),
             data_file("ding.de-en.valid.en.gz"))

    def run(skip=0, **kwargs):
        dataset = translation_dataset(*names, ding_vocabulary, batch_size=16,
                                      max_length=32, shuffle=True, seed=2,
                                      repeat=True, block_size=256,
                                      skip_batches=skip,
                                      **kwargs)
        return [batch for batch, _ in zip(dataset.as_numpy_iterator(),
                                          range(6))]

    uninterrupted, resumed = run(), run(skip=3)
    for a, b in zip(uninterrupted[3:], resumed[:3]):
        np.testing.assert_array_equal(a[0][0], b[0][0])
        np.testing.assert_array_equal(a[1], b[1])
    firsts = [run(num_shards=2, shard_index=k)[0] for k in range(2)]
    texts = [set(ding_vocabulary.detokenize(batch[0][0]).numpy())
             for batch in firsts]
    # Disjoint lines; a sentence the file holds twice may be in both.
    with gzip.open(names[0], "rt", encoding="utf-8") as file:
        counts = collections.Counter(line.rstrip("\n").encode("utf-8")
                                     for line in file)
    assert texts[0] and texts[1]
    assert all(counts[text] > 1 for text in texts[0] & texts[1])


def test_a_word_vocabulary_is_refused(tmp_path):
    from sgmoe.data import WordVocabulary

    path = write_text(tmp_path / "a.txt", ["a"])
    with pytest.raises(ValueError, match="`vocabulary` must be a "
                       "SubwordVocabulary, received WordVocabulary"):
        translation_dataset(path, path, WordVocabulary(["a"]), 2, 8)
