"""`get_config` entries read back from the constructor's arguments."""

import inspect
import types

import keras

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD,
          inspect.Parameter.KEYWORD_ONLY)


def constructor_config(obj, cls, exclude=()):
    """The arguments of `cls.__init__`, read from `obj`, ready to save.

    Every public class keeps one attribute per constructor argument under
    the argument's name, so its `get_config` is this dict over the base
    class's config. Functions (activations) are saved by name, initializers
    and other Keras objects with `keras.saving`, tuples as lists (the form
    they take after a JSON round trip); `exclude` names arguments that are
    not saved as given (for example folded into another argument).

    Example:

    >>> class Scaled:
    ...     def __init__(self, factor, activation="relu", **kwargs):
    ...         self.factor = factor
    ...         self.activation = keras.activations.get(activation)
    >>> constructor_config(Scaled(2.0), Scaled)
    {'factor': 2.0, 'activation': 'relu'}
    """
    parameters = list(inspect.signature(cls.__init__).parameters.items())
    config = {}
    for name, parameter in parameters[1:]:
        if parameter.kind not in _NAMED or name in exclude:
            continue
        if not hasattr(obj, name):
            raise AttributeError(
                f"{type(obj).__name__}.get_config saves each argument of "
                f"{cls.__name__}.__init__ from the attribute of the same "
                f"name, and there is no attribute `{name}`: set "
                f"`self.{name}` in `__init__` or override `get_config`.")
        config[name] = _saved(getattr(obj, name))
    return config


def _saved(value):
    if isinstance(value, types.FunctionType):
        return keras.activations.serialize(value)
    if isinstance(value, keras.initializers.Initializer):
        return keras.initializers.serialize(value)
    if isinstance(value, keras.Operation):
        return keras.saving.serialize_keras_object(value)
    if isinstance(value, tuple):
        return list(value)
    return value
