"""Which sgmoe model family a saved preset directory holds."""

import json
import os

import keras

from sgmoe.models import MoELanguageModel
from sgmoe.models import MoETranslationModel


def saved_model_class(preset_dir):
    """The model class of a directory written by `save_to_preset`.

    Reads the registered class name ("sgmoe>MoELanguageModel") from
    `preset_dir/config.json` without building the model, so a caller can
    pick the vocabulary and data that go with it before loading it with
    `model_class.from_preset(preset_dir)`.

    Args:
        preset_dir: a directory written by `MoELanguageModel.save_to_preset`
            or `MoETranslationModel.save_to_preset`.

    Returns:
        `sgmoe.models.MoELanguageModel` or
        `sgmoe.models.MoETranslationModel`.

    Raises:
        FileNotFoundError: `preset_dir/config.json` does not exist; the
            message is "<config path>: no such file".
        ValueError: the file is not a saved model's config, or it names
            another class; the message starts with the config path.

    Example:

    saved_model_class("/tmp/lm/model")
    # <class 'sgmoe.models.moe_language_model.MoELanguageModel'>
    """
    config_path = os.path.join(preset_dir, "config.json")
    try:
        with open(config_path, encoding="utf-8") as file:
            class_name = json.load(file)["class_name"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{config_path}: not a saved sgmoe model: {error}") from None
    classes = {keras.saving.get_registered_name(cls): cls
               for cls in (MoELanguageModel, MoETranslationModel)}
    model_class = (classes.get(class_name) if isinstance(class_name, str)
                   else None)
    if model_class is None:
        raise ValueError(
            f"{config_path}: holds a {class_name}, not a MoELanguageModel "
            "or a MoETranslationModel")
    return model_class
