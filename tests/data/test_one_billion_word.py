"""The One Billion Word layout: the README's globs on a fake directory tree."""

import os

import numpy as np

from sgmoe.data import WordVocabulary
from sgmoe.data import expand_file_patterns
from sgmoe.data import language_model_dataset
from sgmoe.data import one_billion_word_patterns
from tests.data.files import write_text

TRAIN_DIR = "training-monolingual.tokenized.shuffled"
HELDOUT_DIR = "heldout-monolingual.tokenized.shuffled"


def fake_benchmark(root):
    """Two training shards and two held-out shards, named as in the archive."""
    os.makedirs(os.path.join(root, TRAIN_DIR))
    os.makedirs(os.path.join(root, HELDOUT_DIR))
    write_text(os.path.join(root, TRAIN_DIR, "news.en-00002-of-00100"),
               ["The cat sat .", "The dog ran ."])
    write_text(os.path.join(root, TRAIN_DIR, "news.en-00001-of-00100"),
               ["The cat ran .", "A bird sang ."])
    write_text(os.path.join(root, HELDOUT_DIR,
                            "news.en.heldout-00000-of-00050"),
               ["The zebra ran ."])
    write_text(os.path.join(root, HELDOUT_DIR,
                            "news.en.heldout-00001-of-00050"),
               ["A cat sang ."])


def test_readme_globs_find_the_shards_in_order(tmp_path):
    root = str(tmp_path
               / "1-billion-word-language-modeling-benchmark-r13output")
    fake_benchmark(root)
    # The README's flags, verbatim apart from the directory.
    train_files = f"{root}/training-monolingual.tokenized.shuffled/news.en-*"
    eval_files = (f"{root}/heldout-monolingual.tokenized.shuffled/"
                  "news.en.heldout-00000-of-00050")
    assert [os.path.basename(f) for f in expand_file_patterns(train_files)] \
        == ["news.en-00001-of-00100", "news.en-00002-of-00100"]
    patterns = one_billion_word_patterns(root)
    assert (patterns.train, patterns.test) == (train_files, eval_files)
    assert [os.path.basename(f)
            for f in expand_file_patterns(patterns.heldout)] == [
        "news.en.heldout-00000-of-00050", "news.en.heldout-00001-of-00050"]

    # Words seen at least twice, as the benchmark keeps those seen 3 times.
    vocabulary = WordVocabulary.build(train_files, min_count=2)
    assert vocabulary.words == [".", "The", "cat", "ran"]
    vocabulary.save(str(tmp_path / "model"))
    vocabulary = WordVocabulary.load(str(tmp_path / "model"))

    [(inputs, targets)] = list(language_model_dataset(
        eval_files, vocabulary, batch_size=4, max_length=8,
        pad_to_bucket_length=False).as_numpy_iterator())
    # <S> The <UNK> ran .  ->  The <UNK> ran . </S>
    np.testing.assert_array_equal(inputs, [[1, 5, 3, 7, 4]])
    np.testing.assert_array_equal(targets, [[5, 3, 7, 4, 2]])
