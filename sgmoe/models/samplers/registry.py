"""Samplers by name or config: `get`, `serialize`, `deserialize`."""

import keras

from sgmoe.models.samplers.greedy_sampler import GreedySampler
from sgmoe.models.samplers.random_sampler import RandomSampler
from sgmoe.models.samplers.sampler import Sampler
from sgmoe.models.samplers.top_k_sampler import TopKSampler
from sgmoe.models.samplers.top_p_sampler import TopPSampler

SAMPLERS = {
    "greedy": GreedySampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "random": RandomSampler,
}


def serialize(sampler):
    """A sampler's config dict ({"class_name", "config", ...})."""
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config):
    """The sampler of a `serialize` dict; its "class_name" may also be a
    short name ("greedy", "top_k", "top_p", "random")."""
    return keras.saving.deserialize_keras_object(
        config, module_objects=dict(
            SAMPLERS, **{cls.__name__: cls for cls in SAMPLERS.values()}))


def get(identifier):
    """A sampler from a name, a config or a sampler.

    Args:
        identifier: a `Sampler` (returned as is), a name ("greedy",
            "top_k", "top_p", "random": the class with its default
            arguments) or a dict, either `serialize`'s output or
            {"class_name": name, "config": {arguments}}.

    Example:

    >>> get("top_k").k
    5
    >>> get({"class_name": "top_p", "config": {"p": 0.9, "seed": 1}}).p
    0.9
    """
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in SAMPLERS:
        return SAMPLERS[identifier]()
    if isinstance(identifier, dict):
        try:
            sampler = deserialize(identifier)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`sampler` {identifier!r} is not a sampler config: "
                f"{error}") from None
        if isinstance(sampler, Sampler):
            return sampler
    raise ValueError(
        f"`sampler` must be a Sampler, one of {sorted(SAMPLERS)} or a "
        f"sampler config dict, received sampler={identifier!r}.")
