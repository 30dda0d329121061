"""Routers: the `Router` base class, the routers of the literature, `get`.

Every router subclasses `Router` and is known by a name:

- "noisy_top_k": `NoisyTopKRouter`, Shazeer et al. 2017 (the default);
- "switch": `SwitchRouter`, Switch Transformer top-1 (Fedus et al. 2021);
- "gshard": `GShardRouter`, GShard top-2 (Lepikhin et al. 2020);
- "expert_choice": `ExpertChoiceRouter` (Zhou et al. 2022);
- "strictly_balanced": `StrictlyBalancedRouter`, Shazeer et al. 2017,
  Appendix F.
"""

import inspect

import keras

from sgmoe.layers.routers.expert_choice_router import ExpertChoiceRouter
from sgmoe.layers.routers.gshard_router import GShardRouter
from sgmoe.layers.routers.noisy_top_k_router import NoisyTopKRouter
from sgmoe.layers.routers.router import Router
from sgmoe.layers.routers.routing_result import ExpertSlots
from sgmoe.layers.routers.routing_result import RoutingResult
from sgmoe.layers.routers.strictly_balanced_router import (
    StrictlyBalancedRouter)
from sgmoe.layers.routers.switch_router import SwitchRouter

ROUTERS = {
    "noisy_top_k": NoisyTopKRouter,
    "switch": SwitchRouter,
    "gshard": GShardRouter,
    "expert_choice": ExpertChoiceRouter,
    "strictly_balanced": StrictlyBalancedRouter,
}


def takes_k(router_class):
    """Whether `router_class` has a `k` argument (else its k is fixed)."""
    return "k" in inspect.signature(router_class.__init__).parameters


def get(identifier, **router_args):
    """A router from a name, a config dict or a `Router`.

    Args:
        identifier: a name of `ROUTERS` (the router is then built with
            `router_args`), a dict from `keras.saving.serialize_keras_object`
            or a router's `get_config` with its class, or a `Router`
            (returned as it is; `router_args` must then be empty).
        **router_args: constructor arguments of a named router.

    Returns:
        A `Router`.

    Raises:
        ValueError: naming `router` for an unknown name or an object that is
            not a `Router`, or `router_args` given with a built router.

    Example:

    >>> router = get("switch", num_experts=8, load_balancing_weight=0.02)
    >>> type(router).__name__, router.k
    ('SwitchRouter', 1)
    """
    if isinstance(identifier, str):
        if identifier not in ROUTERS:
            raise ValueError(
                f"`router` must be one of {sorted(ROUTERS)} or a Router, "
                f"received router={identifier!r}.")
        return ROUTERS[identifier](**router_args)
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if not isinstance(identifier, Router):
        raise ValueError(
            "`router` must be a router name, a serialized router or a "
            f"sgmoe.layers.Router, received router={identifier!r}.")
    if router_args:
        raise ValueError(
            f"`router_args` apply to a router given by name; received "
            f"router_args={router_args!r} with the router object "
            f"{identifier.name!r} ({type(identifier).__name__}): set them "
            "on the router.")
    return identifier
