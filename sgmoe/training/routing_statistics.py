"""Summaries of a Mixture-of-Experts layer's routing, as Python floats."""

import numpy as np
from keras import ops


def coefficient_of_variation(values):
    """Population std / mean (ddof = 0); 0 when the mean is 0."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean()
    return float(values.std() / mean) if mean != 0 else 0.0


def moe_statistics(layer):
    """The routing statistics of a MoE layer's last call, as Python floats.

    Args:
        layer: a `sgmoe.layers.MoELayer`.

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
