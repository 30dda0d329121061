"""Which model class a preset directory holds, read from its config.json."""

import json

import pytest

from sgmoe.evaluation import saved_model_class
from sgmoe.models import MoELanguageModel
from sgmoe.models import MoETranslationModel


def write_config(directory, content):
    directory.mkdir()
    (directory / "config.json").write_text(content)
    return str(directory)


def test_registered_names_give_the_model_classes(tmp_path):
    # The names save_to_preset writes (pinned in tests/models).
    for name, expected in (("sgmoe>MoELanguageModel", MoELanguageModel),
                           ("sgmoe>MoETranslationModel",
                            MoETranslationModel)):
        directory = write_config(tmp_path / name.split(">")[1], json.dumps(
            {"class_name": name, "config": {}}))
        assert saved_model_class(directory) is expected


def test_missing_and_foreign_configs_raise_naming_the_file(tmp_path):
    config = tmp_path / "none" / "config.json"
    with pytest.raises(FileNotFoundError) as error:
        saved_model_class(str(tmp_path / "none"))
    assert str(error.value) == f"{config}: no such file"
    for name, content, problem in (
            ("text", "not json", "not a saved sgmoe model"),
            ("no_class", "{}", "not a saved sgmoe model: 'class_name'"),
            ("a_list", "[1]", "not a saved sgmoe model"),
            ("other", '{"class_name": "keras>Sequential"}',
             "holds a keras>Sequential, not a MoELanguageModel")):
        directory = write_config(tmp_path / name, content)
        with pytest.raises(ValueError) as error:
            saved_model_class(directory)
        assert str(error.value).startswith(
            f"{directory}/config.json: {problem}"), name
