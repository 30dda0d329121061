"""Preset directories that carry everything: config, weights, tokenizer
and metadata (`MoEModel.save_to_preset`, `from_preset(directory)`)."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import sgmoe
from sgmoe.data import SubwordVocabulary
from sgmoe.data import WordVocabulary
from sgmoe.models import MoELanguageModel
from sgmoe.models import MoETranslationModel
from sgmoe.models import moe_model


def language_model():
    model = MoELanguageModel.from_preset("tiny_moe", seed=1)
    model(ops.ones((1, 3), "int32"))
    return model


def test_language_model_preset_carries_its_tokenizer_and_metadata(tmp_path):
    model = language_model()
    vocabulary = WordVocabulary(["the", "cat", "sat"])
    model.vocabulary = vocabulary
    model.save_to_preset(tmp_path, metadata={"training_data": {
        "files": "train.txt", "steps": 3}})

    restored = MoELanguageModel.from_preset(str(tmp_path))
    assert restored.vocabulary.tokens == vocabulary.tokens
    ids = np.array([[1, 4, 5, 6]], "int32")
    np.testing.assert_allclose(ops.convert_to_numpy(restored(ids)),
                               ops.convert_to_numpy(model(ids)), rtol=1e-6)
    # The tokenizer is an asset of the preset, not the model directory's.
    with open(tmp_path / "tokenizer.json") as file:
        stored = json.load(file)
    assert stored == {"class_name": "WordVocabulary",
                      "file": "assets/tokenizer/vocabulary.txt"}
    metadata = moe_model.read_preset_metadata(tmp_path)
    assert metadata["sgmoe_version"] == sgmoe.__version__
    assert metadata["keras_version"] == keras.__version__
    assert metadata["backend"] == keras.backend.backend()
    assert metadata["parameter_count"] == model.count_params() > 0
    assert metadata["training_data"] == {"files": "train.txt", "steps": 3}


def test_a_preset_without_a_tokenizer_loads_without_one(tmp_path):
    model = language_model()
    model.save_to_preset(tmp_path)
    assert not os.path.exists(tmp_path / "tokenizer.json")
    assert MoELanguageModel.from_preset(str(tmp_path)).vocabulary is None
    # The argument wins over the attribute.
    model.vocabulary = WordVocabulary(["a"])
    model.save_to_preset(tmp_path / "b", vocabulary=WordVocabulary(["b"]))
    loaded = MoELanguageModel.from_preset(str(tmp_path / "b")).vocabulary
    assert loaded.tokens[4:] == ["b"]


def test_translation_preset_carries_its_subword_tokenizer(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"das haus {i} ist klein und alt\n"
                            f"the house {i} is small and old\n"
                            for i in range(200)))
    vocabulary = SubwordVocabulary.train([str(text)], vocabulary_size=300,
                                         num_threads=1)
    model = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=vocabulary.size, seed=2)
    model.build()
    model.save_to_preset(tmp_path / "preset", vocabulary=vocabulary)
    restored = MoETranslationModel.from_preset(str(tmp_path / "preset"))
    assert restored.vocabulary.model_proto == vocabulary.model_proto
    source = ops.convert_to_numpy(
        vocabulary.tokenize(["das haus ist klein"]).to_tensor())
    np.testing.assert_array_equal(
        restored.greedy_decode(source, max_length=6)["token_ids"],
        model.greedy_decode(source, max_length=6)["token_ids"])


def test_bad_tokenizer_file_and_arguments(tmp_path):
    model = language_model()
    with pytest.raises(ValueError, match="metadata"):
        model.save_to_preset(tmp_path, metadata=["not", "a", "dict"])
    with pytest.raises(ValueError, match="vocabulary"):
        model.save_to_preset(tmp_path, vocabulary={"the": 4})
    model.save_to_preset(tmp_path, vocabulary=WordVocabulary(["the"]))
    (tmp_path / "tokenizer.json").write_text(
        '{"class_name": "Pickle", "file": "x"}')
    with pytest.raises(ValueError, match="tokenizer.json"):
        MoELanguageModel.from_preset(str(tmp_path))
