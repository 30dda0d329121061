"""Argument checks shared by sgmoe layers: each raises a ValueError naming the argument."""

import numbers


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, received "
                         f"{name}={value!r}.")
    return value


def check_positive_int(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 1):
        raise ValueError(
            f"`{name}` must be a positive integer, received {name}={value!r}.")
    return int(value)


def check_optional_positive_int(name, value):
    """None (the argument's default rule applies) or a positive integer."""
    return None if value is None else check_positive_int(name, value)


def check_optional_id(name, value):
    """None or an integer token id (`padding_id`)."""
    if value is not None and (isinstance(value, bool)
                              or not isinstance(value, int)):
        raise ValueError(f"`{name}` must be None or an integer id, received "
                         f"{name}={value!r}.")
    return value


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


# Keyword arguments every Keras layer takes through **kwargs.
LAYER_ARGUMENTS = frozenset({"name", "dtype", "trainable", "autocast"})


def signature_arguments(cls):
    """(accepted, required) argument names of `cls(...)`: its `__init__`'s
    and those of the classes its `**kwargs` reach, up to Keras's own layer
    or model (whose arguments are `LAYER_ARGUMENTS`); required are those
    of the first `__init__` without a default (a base class's may be
    given by the subclass itself)."""
    import inspect

    import keras

    accepted, required = set(), set()
    seen_init = False
    for klass in cls.__mro__:
        if klass in (keras.layers.Layer, keras.Model, object):
            break
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        for name, parameter in list(parameters.items())[1:]:
            if parameter.kind in (parameter.VAR_KEYWORD,
                                  parameter.VAR_POSITIONAL):
                continue
            accepted.add(name)
            if parameter.default is parameter.empty and not seen_init:
                required.add(name)
        seen_init = True
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            break
    return accepted, required


def check_arguments(name, cls, arguments, legacy=()):
    """Raises a ValueError naming `name` when the dict `arguments` has a
    key `cls` does not take (`legacy` names are read by its `from_config`)
    or lacks one it needs."""
    accepted, required = signature_arguments(cls)
    unknown = sorted(set(arguments) - accepted - LAYER_ARGUMENTS
                     - set(legacy))
    missing = sorted(required - set(arguments))
    if unknown or missing:
        problem = (f"{', '.join(unknown)} not among its arguments" if unknown
                   else f"{', '.join(missing)} missing")
        raise ValueError(
            f"`{name}` must hold keyword arguments of {cls.__name__} "
            f"({problem}; it takes {', '.join(sorted(accepted))}), "
            f"received {name}={arguments!r}.")
