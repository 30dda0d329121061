"""Summaries of a Mixture-of-Experts layer's routing, as Python floats."""

import numpy as np
from keras import ops


def coefficient_of_variation(values):
    """Population std / mean (ddof = 0); 0 when the mean is 0."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean()
    return float(values.std() / mean) if mean != 0 else 0.0


def _max_over_mean(values):
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean()
    return float(values.max() / mean) if mean != 0 else 0.0


def moe_statistic_values(layer, window=False):
    """A MoE layer's statistics as NumPy values, by name.

    Args:
        layer: a `sgmoe.layers.MoELayer`.
        window: if true, the means over the training calls of the layer's
            current window (`MoELayer.window_statistics`), or, when the
            window holds no training call, the last call's values;
            otherwise the last call's values.

    Returns:
        A dict {name: NumPy value} with the names of
        `MoELayer.last_call_statistics`: "expert_importance",
        "expert_load", "expert_dispatched", "expert_dropped" (each [E]),
        "dropped_fraction" and the auxiliary losses (scalars).
    """
    values = layer.window_statistics() if window else None
    if values is None:
        return {name: ops.convert_to_numpy(variable) for name, variable
                in layer.last_call_statistics().items()}
    values.pop("steps")
    return values


def moe_statistics(layer, window=False):
    """The routing statistics of a MoE layer, as Python floats.

    Args:
        layer: a `sgmoe.layers.MoELayer`.
        window: summarize the means over the layer's training window
            instead of the last call (see `moe_statistic_values`).

    Returns:
        A dict with "cv_importance", "cv_load" and "cv_dispatched" (the
        coefficient of variation, population std / mean, 0 for a zero
        mean, of the router's importance, its load and the assignments
        each expert computed), "max_over_mean_load" and
        "max_over_mean_dispatched" (max / mean, 0 for a zero mean),
        "dropped_fraction", and one entry per auxiliary loss, by its name.

    Example:

    >>> moe = MixtureOfExperts(4, 8, k=2)
    >>> _ = moe(np.ones((2, 5, 16), "float32"), training=True)
    >>> sorted(moe_statistics(moe))[:3]
    ['cv_dispatched', 'cv_importance', 'cv_load']
    """
    return summarize_statistics(moe_statistic_values(layer, window))


def summarize_statistics(values):
    """`moe_statistics` of values from `moe_statistic_values`."""
    values = dict(values)
    statistics = {
        "cv_importance": coefficient_of_variation(
            values.pop("expert_importance")),
        "cv_load": coefficient_of_variation(values["expert_load"]),
        "max_over_mean_load": _max_over_mean(values.pop("expert_load")),
        "cv_dispatched": coefficient_of_variation(
            values["expert_dispatched"]),
        "max_over_mean_dispatched": _max_over_mean(
            values.pop("expert_dispatched")),
    }
    values.pop("expert_dropped")
    statistics.update({name: float(value) for name, value in values.items()})
    return statistics
