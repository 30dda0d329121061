"""What every sgmoe model shares: its MoE layers in `summary()`, and
preset directories (`save_to_preset`, `from_preset(directory)`)."""

import datetime
import importlib
import inspect
import json
import os

import keras
from keras import ops

from sgmoe.layers.hierarchical_mixture_of_experts import (
    HierarchicalMixtureOfExperts)
from sgmoe.layers.moe_layer import find_moe_layers

PRESET_CONFIG_FILE = "config.json"
PRESET_WEIGHTS_FILE = "model.weights.h5"
PRESET_METADATA_FILE = "metadata.json"
PRESET_TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_ASSETS_DIR = os.path.join("assets", "tokenizer")
# The tokenizers a preset can carry: class name -> module of `sgmoe.data`
# (imported only when a preset has one: they need TensorFlow).
TOKENIZER_MODULES = {
    "WordVocabulary": "sgmoe.data.word_vocabulary",
    "SubwordVocabulary": "sgmoe.data.subword_vocabulary",
}


def is_preset_directory(name):
    """Whether `name` is a directory (a `save_to_preset` output)."""
    return isinstance(name, os.PathLike) or (
        isinstance(name, str) and os.path.isdir(name))


def constructor_arguments(model_class, config, presets):
    """Every constructor argument of a config, defaults filled in.

    Args:
        model_class: the model class whose `__init__` defaults fill gaps.
        config: a dict of arguments, a model (its `get_config()`) or the
            name of one of `presets`.
        presets: {name: arguments} of the model class.
    """
    if isinstance(config, str):
        if config not in presets:
            raise ValueError(
                f"Unknown preset {config!r}, expected one of "
                f"{sorted(presets)}.")
        config = presets[config]
    if hasattr(config, "get_config"):
        config = config.get_config()
    parameters = inspect.signature(model_class.__init__).parameters
    resolved = {name: p.default for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty}
    resolved.update(config)
    return resolved


class MoEModel(keras.Model):
    """A `keras.Model` with MoE-aware summary and preset directories.

    Subclasses build with `build(None)` or from the input shape they store
    in `preset_input_shape`.
    """

    # The input shape `save_to_preset` records for `build`; None builds a
    # model whose `build` needs no shape.
    preset_input_shape = None
    # The constructor arguments that configure MoE layers (see
    # `sgmoe.models.config_overrides`).
    MOE_ARGUMENTS = ()
    # The built-in presets, {name: constructor arguments}.
    BUILTIN_PRESETS = {}

    def moe_layers(self):
        """The model's MoE layers (see `sgmoe.layers.find_moe_layers`)."""
        return list(find_moe_layers(self).values())

    def summary(self, line_length=None, positions=None, print_fn=None,
                expand_nested=False, show_trainable=False, layer_range=None):
        """Keras's summary, then one line per MoE layer: its experts, their
        parameters in total and per expert, its gating parameters and how
        many experts each token uses."""
        super().summary(line_length=line_length, positions=positions,
                        print_fn=print_fn, expand_nested=expand_nested,
                        show_trainable=show_trainable,
                        layer_range=layer_range)
        lines = [describe_moe_layer(layer) for layer in self.moe_layers()]
        if lines:
            (print_fn or print)("\n".join(
                ["Mixture-of-Experts layers:"] + lines))

    # The tokenizer of text in and out (`sgmoe.data.WordVocabulary` or
    # `SubwordVocabulary`), or None: set it, or load a preset that has one.
    vocabulary = None

    def save_to_preset(self, directory, vocabulary=None, metadata=None):
        """Writes a preset directory that `from_preset` loads.

        Files: config.json (the class and its config), model.weights.h5,
        metadata.json (sgmoe and Keras versions, the backend, the
        parameter count, the time of saving, and `metadata`), and, when
        the model has a tokenizer, tokenizer.json naming its class and its
        file under assets/tokenizer/.

        Args:
            directory: the directory to write (created if needed).
            vocabulary: the tokenizer to store; None means `self.vocabulary`
                (none if that is None too).
            metadata: a JSON-serializable dict added to metadata.json, e.g.
                a summary of the training data.
        """
        if not self.built:
            raise ValueError(
                "Build the model (call it on a batch) before save_to_preset.")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("`metadata` must be None or a dict, received "
                             f"metadata={metadata!r}.")
        vocabulary = vocabulary if vocabulary is not None else self.vocabulary
        if vocabulary is not None and (
                type(vocabulary).__name__ not in TOKENIZER_MODULES):
            raise ValueError(
                "`vocabulary` must be a WordVocabulary or a "
                f"SubwordVocabulary, received a {type(vocabulary).__name__}.")
        os.makedirs(directory, exist_ok=True)
        _write_json(os.path.join(directory, PRESET_CONFIG_FILE), {
            "class_name": keras.saving.get_registered_name(type(self)),
            "config": self.get_config(),
            "input_shape": self.preset_input_shape,
            "keras_version": keras.__version__,
        })
        self.save_weights(os.path.join(directory, PRESET_WEIGHTS_FILE))
        if vocabulary is not None:
            path = vocabulary.save(os.path.join(directory,
                                                TOKENIZER_ASSETS_DIR))
            _write_json(os.path.join(directory, PRESET_TOKENIZER_FILE), {
                "class_name": type(vocabulary).__name__,
                "file": os.path.relpath(path, directory).replace(os.sep, "/"),
            })
        from sgmoe import __version__

        _write_json(os.path.join(directory, PRESET_METADATA_FILE), dict(
            {"sgmoe_version": __version__,
             "keras_version": keras.__version__,
             "backend": keras.backend.backend(),
             "parameter_count": int(self.count_params()),
             "date_saved": datetime.datetime.now(
                 datetime.timezone.utc).isoformat(timespec="seconds")},
            **(metadata or {})))

    @classmethod
    def presets(cls):
        """Names of the built-in presets."""
        return sorted(cls.BUILTIN_PRESETS)

    @classmethod
    def from_preset(cls, name, **overrides):
        """A model from a built-in preset or a `save_to_preset` directory.

        Args:
            name: one of `presets()` (the model family's presets module,
                `language_model_presets` or `translation_model_presets`,
                describes them), or a directory written by
                `save_to_preset`, whose weights are loaded.
            **overrides: constructor arguments replacing the preset's (e.g.
                vocabulary_size, dropout, moe); `config_overrides.merge`
                updates a preset's `moe` key by key instead. With a
                directory, overrides must keep the weight shapes.
        """
        if is_preset_directory(name):
            return cls.from_preset_directory(name, **overrides)
        if name not in cls.BUILTIN_PRESETS:
            raise ValueError(
                f"Unknown preset {name!r}: not a directory, and not one of "
                f"{cls.presets()}.")
        return cls(**dict(cls.BUILTIN_PRESETS[name], **overrides))

    @classmethod
    def from_preset_directory(cls, directory, **overrides):
        """The model `save_to_preset` wrote, with its weights and, if the
        preset has one, its tokenizer (`vocabulary`).

        `overrides` replace constructor arguments and must keep the
        weight shapes.
        """
        directory = os.fspath(directory)
        with open(os.path.join(directory, PRESET_CONFIG_FILE)) as file:
            stored = json.load(file)
        model = cls.from_config(dict(stored["config"], **overrides))
        input_shape = stored.get("input_shape")
        model.build(None if input_shape is None else tuple(input_shape))
        model.load_weights(os.path.join(directory, PRESET_WEIGHTS_FILE))
        model.vocabulary = load_preset_tokenizer(directory)
        return model


def plus_auxiliary_losses(loss, losses):
    """`loss` plus the sum of each of `losses` (a model's `losses`: the MoE
    balancing losses and z-losses its layers added), in float32."""
    for extra in losses:
        loss = loss + ops.cast(ops.sum(extra), "float32")
    return loss


def load_preset_tokenizer(directory):
    """The tokenizer a preset directory carries, or None if it has none.

    Raises:
        ValueError: tokenizer.json names an unknown class, or is not JSON.
    """
    path = os.path.join(directory, PRESET_TOKENIZER_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
        module = TOKENIZER_MODULES[stored["class_name"]]
        file_name = stored["file"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a preset tokenizer file ({error!r}); "
                         f"expected a class among {sorted(TOKENIZER_MODULES)}"
                         " and a file") from None
    tokenizer_class = getattr(importlib.import_module(module),
                              stored["class_name"])
    return tokenizer_class.load(os.path.join(directory, file_name))


def read_preset_metadata(directory):
    """The metadata.json of a preset directory as a dict ({} if none)."""
    path = os.path.join(directory, PRESET_METADATA_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)


def describe_moe_layer(layer):
    """One line: experts, k, expert shape, expert and gating parameters."""
    experts = layer.experts
    expert_weights = sum(int(ops.size(w)) for w in experts.trainable_weights)
    all_weights = sum(int(ops.size(w)) for w in layer.trainable_weights)
    num_experts = experts.num_experts
    shape = (f"{layer.input_dim} -> {experts.hidden_dim} -> "
             f"{experts.output_dim or layer.input_dim}")
    if isinstance(layer, HierarchicalMixtureOfExperts):
        routing = (f"{layer.expert_groups} groups x {layer.experts_per_group} "
                   f"experts, k={layer.k_primary}x{layer.k_secondary}")
    else:
        routing = f"{num_experts} experts, k={layer.k}"
    return (f" {layer.name} ({type(layer).__name__}): {routing}, experts "
            f"{shape}; expert parameters {expert_weights:,} "
            f"({expert_weights // num_experts:,} per expert), gating "
            f"{all_weights - expert_weights:,}")
