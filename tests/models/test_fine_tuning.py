"""Freezing and unfreezing MoE layers, found by their base class."""

import keras
import numpy as np
from keras import ops

import sgmoe
from sgmoe.layers import find_moe_layers
from sgmoe.models import MoELanguageModel
from sgmoe.models import set_moe_layers_trainable
from sgmoe.models import set_non_moe_layers_trainable


def trainable_paths(model):
    return {w.path for w in model.trainable_weights}


def test_freeze_and_unfreeze_moe_and_the_rest():
    model = MoELanguageModel.from_preset("tiny_moe", padding_id=0,
                                         layer_types=("lstm", "moe"))
    model.build((None, None))
    moe = model.get_layer("moe")
    assert list(find_moe_layers(model).values()) == [moe]
    moe_paths = {w.path for w in moe.trainable_weights}
    all_paths = trainable_paths(model)
    assert moe_paths and moe_paths < all_paths

    set_moe_layers_trainable(model, False)
    assert trainable_paths(model) == all_paths - moe_paths
    set_moe_layers_trainable(model, True)
    assert trainable_paths(model) == all_paths

    changed = set_non_moe_layers_trainable(model, False)
    assert {layer.name for layer in changed if layer.weights} == {
        "embedding", "lstm", "softmax"}
    assert trainable_paths(model) == moe_paths
    # A train step after recompiling moves only the MoE layer's weights.
    before = {w.path: ops.convert_to_numpy(w) for w in model.weights}
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    ids = np.random.RandomState(0).randint(1, 100, (4, 5))
    model.train_on_batch(ids, np.roll(ids, 1, axis=1))
    moved = {w.path for w in model.weights if not np.array_equal(
        before[w.path], ops.convert_to_numpy(w)) and w.trainable}
    assert moved and moved <= moe_paths
    set_non_moe_layers_trainable(model, True)
    assert trainable_paths(model) == all_paths


def test_finds_moe_layers_nested_in_a_functional_model():
    inputs = keras.Input((5, 16))
    inner = keras.Sequential([
        keras.layers.Dense(16),
        sgmoe.layers.HierarchicalMixtureOfExperts(2, 2, expert_hidden_dim=8),
    ])
    outputs = keras.layers.Dense(3)(inner(inputs))
    outputs = sgmoe.layers.MixtureOfExperts(4, 8, k=2)(outputs)
    model = keras.Model(inputs, outputs)
    found = list(find_moe_layers(model).values())
    assert [type(layer).__name__ for layer in found] == [
        "HierarchicalMixtureOfExperts", "MixtureOfExperts"]
    set_non_moe_layers_trainable(model, False)
    # The Sequential holding a MoE stays trainable; its Dense does not.
    assert inner.trainable and not inner.layers[0].trainable
    assert {w.path for w in model.trainable_weights} == {
        w.path for layer in found for w in layer.trainable_weights}


def test_unbuilt_model_finds_its_moe_layers():
    model = MoELanguageModel.from_preset("tiny_moe")
    changed = set_moe_layers_trainable(model, False)
    assert [layer.name for layer in changed] == ["moe"]
    assert not model.get_layer("moe").trainable


def test_a_layer_with_moe_statistics_is_not_a_moe_layer():
    class Impostor(keras.layers.Layer):
        expert_importance = expert_load = dropped_fraction = None
        auxiliary_losses = {}

        def call(self, inputs):
            return inputs

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Impostor()(inputs))
    assert find_moe_layers(model) == {}
