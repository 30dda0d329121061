"""Argument checks shared by sgmoe layers: each raises a ValueError naming the argument."""

import numbers


def check_positive_int(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 1):
        raise ValueError(
            f"`{name}` must be a positive integer, received {name}={value!r}.")
    return int(value)


def check_non_negative_float(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not value >= 0):
        raise ValueError(
            f"`{name}` must be a non-negative number, received {name}={value!r}.")
    return float(value)


def check_positive_float(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not value > 0):
        raise ValueError(
            f"`{name}` must be a positive number, received {name}={value!r}.")
    return float(value)


def check_unit_interval(name, value):
    """A number in [0, 1): decay rates, noise amplitudes."""
    value = check_non_negative_float(name, value)
    if value >= 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1), received {name}={value!r}.")
    return value


def check_top_k(k, num_experts, name="k", fan_out_name="num_experts"):
    """1 <= k <= num_experts; `name` and `fan_out_name` go in the message."""
    k = check_positive_int(name, k)
    if k > num_experts:
        raise ValueError(
            f"`{name}` must be at most `{fan_out_name}`={num_experts}, "
            f"received {name}={k}.")
    return k
