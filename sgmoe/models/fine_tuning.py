"""Freezing and unfreezing the MoE layers of a model in one call.

MoE layers are the `sgmoe.layers.MoELayer`s of the model, nested ones
included (`sgmoe.layers.find_moe_layers`), so the helpers work on any Keras
model, functional or subclassed.

Keras reads `trainable` when a model is compiled: compile again after
changing it.

Example:

>>> model = MoELanguageModel.from_preset("tiny_moe")
>>> model.build((None, None))
>>> frozen = set_non_moe_layers_trainable(model, False)  # train the MoE only
>>> model.compile(optimizer="adam")
"""

from sgmoe.layers.moe_layer import find_moe_layers
from sgmoe.layers.moe_layer import is_moe_layer


def _children(layer):
    # Keras 3 keeps a layer's directly tracked sublayers here; there is no
    # public accessor for layers that are not models.
    return list(layer._flatten_layers(include_self=False, recursive=False))


def set_moe_layers_trainable(model, trainable):
    """Freezes (False) or unfreezes (True) every MoE layer of `model`.

    Returns the MoE layers changed.
    """
    layers = list(find_moe_layers(model).values())
    for layer in layers:
        layer.trainable = bool(trainable)
    return layers


def set_non_moe_layers_trainable(model, trainable):
    """Freezes (False) or unfreezes (True) every layer that is not a MoE
    layer (nor inside one): embeddings, LSTMs, softmax, ...

    Containers holding a MoE layer keep `trainable=True` (freezing them
    would freeze the MoE layer too); their other parts are set. Returns the
    layers changed.
    """
    changed = []

    def contains_moe(layer):
        return any(is_moe_layer(child) or contains_moe(child)
                   for child in _children(layer))

    def visit(layer):
        for child in _children(layer):
            if is_moe_layer(child):
                continue
            if contains_moe(child):
                visit(child)
            else:
                child.trainable = bool(trainable)
                changed.append(child)

    visit(model)
    return changed
