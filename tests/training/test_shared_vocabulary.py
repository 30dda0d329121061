"""The run's vocabulary: loaded from the model directory, or built and
saved there once."""

from sgmoe.data import WordVocabulary
from sgmoe.training import shared_vocabulary


def test_built_once_then_loaded_from_the_model_directory(tmp_path):
    builds = []

    def build(words=("the", "cat")):
        builds.append(words)
        return WordVocabulary(words)

    first = shared_vocabulary(str(tmp_path), WordVocabulary, build)
    assert (tmp_path / WordVocabulary.FILENAME).is_file()
    # A resumed run keeps the saved ids, whatever build would give now.
    again = shared_vocabulary(str(tmp_path), WordVocabulary,
                              lambda: build(("other", "words")))
    assert builds == [("the", "cat")]
    assert again.tokens == first.tokens


def test_without_a_model_directory_every_call_builds():
    builds = []
    vocabulary = shared_vocabulary(
        None, WordVocabulary,
        lambda: builds.append(1) or WordVocabulary(["a"]))
    assert builds == [1] and vocabulary.words == ["a"]
