"""Finds Mixture-of-Experts layers in a model and summarises their routing."""

import numpy as np
from keras import ops

_STATISTIC_ATTRIBUTES = ("expert_importance", "expert_load",
                         "dropped_fraction", "auxiliary_losses")


def is_moe_layer(layer):
    """Whether `layer` keeps the MoE monitoring statistics.

    Duck typing: any layer with `expert_importance`, `expert_load`,
    `dropped_fraction` and `auxiliary_losses` (set when it is built) counts,
    whatever its class.
    """
    return all(hasattr(layer, name) for name in _STATISTIC_ATTRIBUTES)


def find_moe_layers(model):
    """The built MoE layers of a model, nested ones included, by tag name.

    Names are the layers' `path`s. A sub-model built on its own before it
    was nested gives its layers paths without the outer names, so paths can
    repeat; layers whose path is not unique are named by their chain of
    layer names from the model instead (e.g. "block/moe"), with a numeric
    suffix if even that repeats.

    Args:
        model: a `keras.Model` or layer.

    Returns:
        A dict {name: layer}, in the order the layers are found.

    Example:

    >>> inputs = keras.Input((5, 16))
    >>> outputs = MixtureOfExperts(4, 8, k=2, name="moe")(inputs)
    >>> list(find_moe_layers(keras.Model(inputs, outputs)))
    ['moe']
    """
    found = []  # (layer, chain of names)
    seen = set()

    def walk(layer, chain):
        for sublayer in layer._flatten_layers(include_self=False,
                                              recursive=False):
            if id(sublayer) in seen:
                continue
            seen.add(id(sublayer))
            sub_chain = chain + (sublayer.name,)
            if is_moe_layer(sublayer):
                found.append((sublayer, sub_chain))
            walk(sublayer, sub_chain)

    if is_moe_layer(model):
        found.append((model, (model.name,)))
    seen.add(id(model))
    walk(model, ())

    paths = [layer.path or layer.name for layer, _ in found]
    names = {}
    for (layer, chain), path in zip(found, paths):
        name = path if paths.count(path) == 1 else "/".join(chain)
        unique, suffix = name, 2
        while unique in names:
            unique, suffix = f"{name}_{suffix}", suffix + 1
        names[unique] = layer
    return names


def coefficient_of_variation(values):
    """Population std / mean (ddof = 0); 0 when the mean is 0."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean()
    return float(values.std() / mean) if mean != 0 else 0.0


def moe_statistics(layer):
    """The routing statistics of a MoE layer's last call, as Python floats.

    Args:
        layer: a MoE layer (see `is_moe_layer`).

    Returns:
        A dict with "cv_importance" and "cv_load" (coefficient of variation,
        population std / mean, 0 for a zero mean), "max_over_mean_load"
        (max / mean of the per-expert load, 0 for a zero mean),
        "dropped_fraction", and one entry per auxiliary loss, by its name.

    Example:

    >>> moe = MixtureOfExperts(4, 8, k=2)
    >>> _ = moe(np.ones((2, 5, 16), "float32"), training=True)
    >>> sorted(moe_statistics(moe))[:2]
    ['cv_importance', 'cv_load']
    """
    importance = ops.convert_to_numpy(layer.expert_importance)
    load = np.asarray(ops.convert_to_numpy(layer.expert_load), np.float64)
    mean_load = load.mean()
    statistics = {
        "cv_importance": coefficient_of_variation(importance),
        "cv_load": coefficient_of_variation(load),
        "max_over_mean_load": (float(load.max() / mean_load)
                               if mean_load != 0 else 0.0),
        "dropped_fraction": float(ops.convert_to_numpy(
            layer.dropped_fraction)),
    }
    for name, variable in layer.auxiliary_losses.items():
        statistics[name] = float(ops.convert_to_numpy(variable))
    return statistics
