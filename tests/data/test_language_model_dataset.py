"""language_model_dataset: shift, padding, buckets, order, shards, resume."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from sgmoe.data import DataError
from sgmoe.data import WordVocabulary
from sgmoe.data import language_model_dataset
from sgmoe.data._pipeline import default_bucket_boundaries
from tests.data.files import write_text

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "data")


def batches(dataset, count=None):
    iterator = dataset.as_numpy_iterator()
    if count is None:
        return list(iterator)
    return [next(iterator) for _ in range(count)]


def sentences(batch_list, vocabulary):
    """The words of every sentence of the batches, as strings."""
    return [" ".join(vocabulary.tokens[i] for i in row[1:] if i)
            for inputs, _ in batch_list for row in inputs]


def numbered_file(path, count, words_per_line=lambda i: 1):
    """Line i: "w<i>" repeated words_per_line(i) times, so lines are unique."""
    return write_text(path, [" ".join([f"w{i}"] * words_per_line(i))
                             for i in range(count)])


def numbered_vocabulary(count):
    return WordVocabulary([f"w{i}" for i in range(count)])


def test_three_line_file_gives_exact_shifted_padded_batches(tmp_path):
    path = write_text(tmp_path / "three.txt",
                      ["the cat sat", "the dog", "", "cat"])
    vocabulary = WordVocabulary.build(path)
    assert vocabulary.words == ["cat", "the", "dog", "sat"]  # ids 4-7
    dataset = language_model_dataset(path, vocabulary, batch_size=3,
                                      max_length=8, bucket_boundaries=[8],
                                      pad_to_bucket_length=False)
    [(inputs, targets)] = batches(dataset)
    # <S>=1, </S>=2; the blank line is skipped; a batch's rows are sorted
    # by length, shortest first.
    np.testing.assert_array_equal(inputs, [[1, 4, 0, 0],
                                           [1, 5, 6, 0],
                                           [1, 5, 4, 7]])
    np.testing.assert_array_equal(targets, [[4, 2, 0, 0],
                                            [5, 6, 2, 0],
                                            [5, 4, 7, 2]])
    assert inputs.dtype == targets.dtype == np.int32

    padded = batches(language_model_dataset(path, vocabulary, 3, 8))
    assert padded[0][0].shape == (3, 8)  # padded to the bucket of length 8
    np.testing.assert_array_equal(padded[0][1][:, :4], targets)
    assert not padded[0][1][:, 4:].any()


def test_default_bucket_boundaries():
    assert default_bucket_boundaries(64) == [8, 12, 16, 24, 32, 48, 64]
    assert default_bucket_boundaries(100) == [
        8, 12, 16, 24, 32, 48, 64, 96, 100]
    assert default_bucket_boundaries(5) == [5]


def test_bucketing_batches_similar_lengths_and_drops_long_sentences(tmp_path):
    # Line i has 1 + (i * 7) % 13 words: input lengths 2..14 with <S>.
    path = numbered_file(tmp_path / "mixed.txt", 40,
                         lambda i: 1 + (i * 7) % 13)
    vocabulary = numbered_vocabulary(40)
    dataset = language_model_dataset(path, vocabulary, batch_size=4,
                                      max_length=12, bucket_boundaries=[4, 8])
    result = batches(dataset)
    kept = [i for i in range(40) if 2 + (i * 7) % 13 <= 12]
    assert sorted(sentences(result, vocabulary)) == sorted(
        " ".join([f"w{i}"] * (1 + (i * 7) % 13)) for i in kept)
    previous_longest = 0
    for inputs, targets in result:
        lengths = (inputs != 0).sum(axis=1)
        # Unshuffled, one block: batches come out sorted by length.
        assert lengths.min() >= previous_longest
        previous_longest = lengths.max()
        # Each is padded to the smallest bucket that fits its longest row.
        bucket = min(b for b in (4, 8, 12) if b >= lengths.max())
        assert inputs.shape == targets.shape == (len(lengths), bucket)
    assert [len(inputs) for inputs, _ in result] == [4] * 8 + [2]


def test_shuffle_is_a_function_of_the_seed_alone(tmp_path):
    path = numbered_file(tmp_path / "lines.txt", 200)
    vocabulary = numbered_vocabulary(200)

    def order(seed):
        dataset = language_model_dataset(
            path, vocabulary, batch_size=4, max_length=4, shuffle=True,
            seed=seed, block_size=64)
        return sentences(batches(dataset), vocabulary)

    first = order(seed=7)
    tf.random.set_seed(99)  # TensorFlow's global seed plays no part
    assert order(seed=7) == first
    assert order(seed=8) != first
    assert sorted(first) == sorted(f"w{i}" for i in range(200))
    assert first != [f"w{i}" for i in range(200)]
    # Sentences move only within their block of 64 (16 batches).
    assert sorted(first[:64]) == sorted(f"w{i}" for i in range(64))


def test_sharding_by_file_and_by_line_is_disjoint_and_complete(tmp_path):
    for k in range(3):
        write_text(tmp_path / f"part-{k}.txt",
                   [f"w{10 * k + i}" for i in range(10)])
    vocabulary = numbered_vocabulary(30)

    def shard(pattern, num_shards, index, **kwargs):
        return sentences(batches(language_model_dataset(
            str(tmp_path / pattern), vocabulary, batch_size=50, max_length=4,
            num_shards=num_shards, shard_index=index, **kwargs)), vocabulary)

    # 3 files, 3 shards: shard k reads file k.
    by_file = [shard("part-*.txt", 3, k) for k in range(3)]
    assert by_file == [[f"w{10 * k + i}" for i in range(10)]
                       for k in range(3)]
    # 1 file, 2 shards: lines alternate between the shards, also when
    # shuffling (both shards shuffle the same stream the same way).
    shuffled = [shard("part-0.txt", 2, k, shuffle=True, seed=3)
                for k in range(2)]
    assert sorted(shuffled[0] + shuffled[1]) == sorted(
        f"w{i}" for i in range(10))
    assert {int(w[1:]) % 2 for w in shuffled[0]} == {0}


def test_skip_batches_resumes_exactly_where_an_iterator_stopped(tmp_path):
    path = numbered_file(tmp_path / "lines.txt", 23,
                         lambda i: 1 + i % 9)
    vocabulary = numbered_vocabulary(23)

    def dataset(skip):
        return language_model_dataset(
            path, vocabulary, batch_size=3, max_length=10, shuffle=True,
            repeat=True, seed=5, block_size=8, skip_batches=skip)

    # 11 batches span more than one epoch (23 sentences, 3 per batch).
    uninterrupted = batches(dataset(0), 11)
    resumed = batches(dataset(6), 5)
    for expected, got in zip(uninterrupted[6:], resumed):
        np.testing.assert_array_equal(expected[0], got[0])
        np.testing.assert_array_equal(expected[1], got[1])
    # Training batches have a static batch size (drop_remainder=repeat).
    assert dataset(0).element_spec[0].shape.as_list() == [3, None]


def test_repeat_reads_every_sentence_once_per_epoch(tmp_path):
    path = numbered_file(tmp_path / "lines.txt", 12)
    vocabulary = numbered_vocabulary(12)
    dataset = language_model_dataset(path, vocabulary, batch_size=4,
                                      max_length=4, shuffle=True, repeat=True,
                                      seed=1, block_size=12)
    epochs = sentences(batches(dataset, 6), vocabulary)
    assert sorted(epochs[:12]) == sorted(epochs[12:]) == sorted(
        f"w{i}" for i in range(12))
    assert epochs[:12] != epochs[12:]  # reshuffled


def test_brown_batches_are_consistent():
    path = os.path.join(DATA_DIR, "brown.valid.txt.gz")
    vocabulary = WordVocabulary.build(path, vocabulary_size=2000)
    dataset = language_model_dataset(path, vocabulary, batch_size=16,
                                      max_length=48, shuffle=True, seed=1)
    counts = collections.Counter()
    for inputs, targets in batches(dataset.take(20)):
        counts[inputs.shape[1]] += 1
        assert inputs.shape == targets.shape
        assert (inputs[:, 0] == vocabulary.bos_id).all()
        mask = targets != 0
        # Targets are the inputs shifted by one, ending with </S>.
        words = inputs[:, 1:] != 0
        np.testing.assert_array_equal(inputs[:, 1:][words],
                                      targets[:, :-1][words])
        ends = mask.sum(axis=1) - 1
        assert (targets[np.arange(len(ends)), ends] == vocabulary.eos_id).all()
        assert ((inputs != 0) == mask).all()
        assert inputs.max() < vocabulary.size
        assert ((targets == vocabulary.eos_id).sum(axis=1) == 1).all()
    assert set(counts) <= {8, 12, 16, 24, 32, 48} and len(counts) > 2


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "`batch_size` must be a positive integer"),
    ({"shard_index": 2, "num_shards": 2}, "`shard_index` must be less than"),
    ({"skip_batches": -1}, "`skip_batches` must be a non-negative integer"),
    ({"bucket_boundaries": [8, 4]}, "`bucket_boundaries` must be increasing"),
    ({"bucket_boundaries": [4, 40]}, "no larger than `max_length`=16"),
    ({"on_malformed": "drop"}, "`on_malformed` must be one of"),
])
def test_arguments_are_checked(tmp_path, kwargs, message):
    path = write_text(tmp_path / "a.txt", ["a"])
    arguments = {"batch_size": 2, "max_length": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        language_model_dataset(path, WordVocabulary(["a"]), **arguments)
    with pytest.raises(ValueError, match="`vocabulary` must be a "
                       "WordVocabulary, received dict"):
        language_model_dataset(path, {"a": 4}, 2, 16)


def test_pad_batches_fills_short_batches_with_padding_rows(tmp_path):
    import sgmoe.data

    path = tmp_path / "text.txt"
    path.write_text("a b c\nb c\nc\na a a a\nb\n")
    vocabulary = sgmoe.data.WordVocabulary.build(str(path))
    dataset = sgmoe.data.language_model_dataset(str(path), vocabulary,
                                                batch_size=2, max_length=8)
    originals = [(x.numpy(), y.numpy()) for x, y in dataset]
    padded = [(x.numpy(), y.numpy())
              for x, y in sgmoe.data.pad_batches(dataset, 4)]
    assert len(padded) == len(originals)
    for (x, y), (px, py) in zip(originals, padded):
        assert px.shape == (4, x.shape[1]) and py.shape == (4, y.shape[1])
        np.testing.assert_array_equal(px[:len(x)], x)
        np.testing.assert_array_equal(py[:len(y)], y)
        assert not px[len(x):].any() and not py[len(y):].any()
    with pytest.raises(ValueError, match="batch_size"):
        sgmoe.data.pad_batches(dataset, 0)


def test_a_repeated_stream_without_a_fitting_sentence_is_an_error(
        tmp_path):
    # Repeating it would never yield a batch: training used to hang.
    path = numbered_file(tmp_path / "long.txt", 5, lambda i: 6)
    vocabulary = numbered_vocabulary(5)
    with pytest.raises(DataError, match=r"long\.txt: no example with at "
                       r"most max_length=4 tokens"):
        language_model_dataset(path, vocabulary, batch_size=2, max_length=4,
                               shuffle=True, repeat=True)
    # One pass of it is simply empty; one fitting line is enough to repeat.
    assert batches(language_model_dataset(path, vocabulary, 2, 4)) == []
    write_text(tmp_path / "long.txt", ["w0 w0 w0 w0 w0 w0", "w1"])
    dataset = language_model_dataset(path, vocabulary, batch_size=2,
                                     max_length=4, repeat=True)
    assert sentences(batches(dataset, 2), vocabulary) == ["w1"] * 4


def test_default_block_shuffles_a_document_ordered_file_as_a_whole(tmp_path):
    # 24,000 lines in "document order": the first batches of a shuffled
    # stream come from the whole file, not from its first block of lines.
    path = numbered_file(tmp_path / "ordered.txt", 24_000)
    dataset = language_model_dataset(str(path), numbered_vocabulary(24_000),
                                     batch_size=100, max_length=4,
                                     shuffle=True, seed=3)
    first = [int(word[1:]) for line in sentences(batches(dataset, 5),
                                                 numbered_vocabulary(24_000))
             for word in line.split()]
    assert len(first) == 500
    assert 0.35 < np.mean(np.array(first) >= 12_000) < 0.65


def test_default_block_size_of_shuffled_and_ordered_streams():
    from sgmoe.data import MAX_SHUFFLE_BLOCK
    from sgmoe.data import TextFileSummary
    from sgmoe.data._pipeline import default_block_size

    files = [TextFileSummary("a", lines=700), TextFileSummary("b", lines=301)]
    assert default_block_size(64, True, files, 1, False) == 64
    assert default_block_size(None, True, files, 1, False) == 1001
    # Four shards keeping every fourth line of the same files.
    assert default_block_size(None, True, files, 4, True) == 251
    huge = [TextFileSummary("c", lines=3 * MAX_SHUFFLE_BLOCK)]
    assert default_block_size(None, True, huge, 1, False) == MAX_SHUFFLE_BLOCK
    # In file order, a window of 10,000 sorted by length: an evaluation's
    # first batches are the first lines', as before.
    assert default_block_size(None, False, huge, 1, False) == 10_000
