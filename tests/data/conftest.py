"""A small subword vocabulary, learned once from the bundled Ding text."""

import os

import pytest

from sgmoe.data import SubwordVocabulary

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "data")


def data_file(name):
    return os.path.join(DATA_DIR, name)


@pytest.fixture(scope="session")
def ding_vocabulary():
    """1,000 pieces from 4,000 sampled lines of both sides of Ding train."""
    return SubwordVocabulary.train(
        [data_file("ding.de-en.train.de.gz"),
         data_file("ding.de-en.train.en.gz")],
        vocabulary_size=1000, max_sentences=4000, seed=1, num_threads=1)
