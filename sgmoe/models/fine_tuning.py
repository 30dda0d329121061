"""Freezing and unfreezing the MoE layers of a model in one call.

A MoE layer is recognised by what monitors read from it, not by its class:
any layer with `expert_importance`, `expert_load`, `dropped_fraction` and
`auxiliary_losses` (every MoE layer of `sgmoe.layers` once built), so the
helpers work on any Keras model, functional or subclassed, and on MoE layers
written elsewhere that keep the same statistics.

Keras reads `trainable` when a model is compiled: compile again after
changing it.

Example:

>>> model = MoELanguageModel.from_preset("tiny_moe")
>>> model.build((None, None))
>>> set_non_moe_layers_trainable(model, False)  # fine-tune only the MoE
>>> model.compile(optimizer="adam")
"""

MOE_ATTRIBUTES = ("expert_importance", "expert_load", "dropped_fraction",
                  "auxiliary_losses")


def is_moe_layer(layer):
    """Whether `layer` has the statistics every MoE layer keeps."""
    return all(hasattr(layer, name) for name in MOE_ATTRIBUTES)


def _children(layer):
    # Keras 3 keeps a layer's directly tracked sublayers here; there is no
    # public accessor for layers that are not models.
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _check_built(model):
    if not model.built:
        raise ValueError(
            f"Build {model.name!r} before looking for its MoE layers: they "
            "are recognised by statistics variables created in build().")


def moe_layers(model):
    """The MoE layers of a built model, outermost first, depth first."""
    _check_built(model)
    found = []

    def visit(layer):
        for child in _children(layer):
            if is_moe_layer(child):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def set_moe_layers_trainable(model, trainable):
    """Freezes (False) or unfreezes (True) every MoE layer of `model`.

    Returns the MoE layers changed.
    """
    layers = moe_layers(model)
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
    _check_built(model)
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
