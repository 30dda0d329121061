"""One way to configure the MoE layers of every model: a dict of layer
arguments, flat or hierarchical, and what it costs.

A model's MoE configuration (`MoELanguageModel(moe=...)`,
`MoETranslationModel(encoder_moe=..., decoder_moe=...)`) is a dict of
keyword arguments of `sgmoe.layers.MixtureOfExperts` ("num_experts", "k",
"router", "router_args", "use_bias", "capacity_factor", ...) or, when it
has "expert_groups", of `sgmoe.layers.HierarchicalMixtureOfExperts`
("expert_groups", "experts_per_group", "k_primary", "k_secondary", ...),
over the model's defaults. The same key means the same thing in every
model because it is the layer's own argument.
"""

import inspect

from sgmoe import _validation
from sgmoe._renamed_arguments import renamed_arguments
from sgmoe.layers import routers
from sgmoe.layers.hierarchical_mixture_of_experts import (
    HierarchicalMixtureOfExperts)
from sgmoe.layers.mixture_of_experts import LEGACY_ROUTER_ARGUMENTS
from sgmoe.layers.mixture_of_experts import MixtureOfExperts


def check_moe_config(name, config):
    """A copy of a MoE configuration (None stays None), or ValueError."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(
            f"`{name}` must be None or a dict of MoE layer arguments, "
            f"received {name}={config!r}.")
    # Saved before the hierarchical MoE's `num_groups` became
    # `expert_groups`.
    return renamed_arguments(config, {"num_groups": "expert_groups"})


def check_moe_per_layer(name, configs, count):
    """A copy of per-layer MoE configurations (None stays None): a list
    of `count` dicts, or ValueError."""
    if configs is None:
        return None
    if (isinstance(configs, (str, dict))
            or not isinstance(configs, (list, tuple))
            or len(configs) != count):
        raise ValueError(
            f"`{name}` must be None or a list of one dict of MoE layer "
            f"arguments per 'moe' layer ({count}), received "
            f"{name}={configs!r}.")
    return [check_moe_config(f"{name}[{i}]", config) or {}
            for i, config in enumerate(configs)]


def layer_config(config, layer_configs, index):
    """The arguments of the `index`-th MoE layer: `layer_configs[index]`
    over `config` (dicts merged key by key), or `config` alone."""
    if layer_configs is None:
        return config
    return merge(config or {}, layer_configs[index])


def merge(config, overrides):
    """`config` updated by `overrides`, dict values key by key (deeply).

    >>> merge({"moe": {"k": 2, "num_experts": 4}}, {"moe": {"k": 1}})
    {'moe': {'k': 1, 'num_experts': 4}}
    """
    merged = dict(config)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def is_hierarchical(config):
    return "expert_groups" in config


def make_moe_layer(config, defaults, *, name, dtype, seed):
    """The MoE layer of a configuration: `config` over `defaults`, with
    `seed` unless the configuration sets one."""
    arguments = dict(defaults, **config)
    arguments.setdefault("seed", seed)
    layer_class = (HierarchicalMixtureOfExperts if is_hierarchical(arguments)
                   else MixtureOfExperts)
    # The flat MoE's from_config also reads the noisy top-k arguments of
    # configs saved before routers owned them.
    _validation.check_arguments(
        name, layer_class, arguments,
        legacy=() if is_hierarchical(arguments) else LEGACY_ROUTER_ARGUMENTS)
    try:
        return layer_class.from_config(dict(arguments, dtype=dtype,
                                            name=name))
    except TypeError as error:
        # Keras's from_config reports the constructor's ValueError (which
        # names the argument) as a TypeError raised while handling it.
        if isinstance(error.__context__, ValueError):
            raise error.__context__ from None
        raise


def moe_cost(config, defaults, model_dim):
    """(expert parameters, gating parameters, ops per token) of a MoE.

    Counted from the configuration alone, as in Shazeer et al. 2017, Table
    7 (ops: multiply-adds of the weight matrices a token goes through in
    training). With d = model_dim, h = expert_hidden_dim, d_out the expert
    output width:

    - experts: E (d h + h d_out) [+ E (h + d_out) biases], plus one more
      network with a residual expert; ops: the experts a token uses
      (k, or k_primary k_secondary) times d h + h d_out, plus the residual
      expert's.
    - flat gating: 2 d E for noisy top-k (W_g and W_noise), d E + E for
      strictly balanced (W_g and thresholds), d E for the others; ops the
      gate's matrices, d E each.
    - hierarchical gating: 2 (d G + G d E_g) with noise (half without);
      ops 2 d G + k_primary 2 d E_g, a token's secondary gates being those
      of its k_primary groups only.
    """
    c = dict(defaults, **config)
    d, h = model_dim, c["expert_hidden_dim"]
    out = c.get("output_dim") or d
    per_expert = d * h + h * out
    bias = h + out if c.get("use_bias", True) else 0
    residual = 1 if c.get("residual_expert") else 0
    if is_hierarchical(c):
        groups, per_group = c["expert_groups"], c["experts_per_group"]
        experts = groups * per_group
        noise = 2 if c.get("noisy", True) else 1
        gating = noise * (d * groups + groups * d * per_group)
        gating_ops = noise * (d * groups
                              + c.get("k_primary", 2) * d * per_group)
        used = c.get("k_primary", 2) * c.get("k_secondary", 2)
    else:
        experts = c["num_experts"]
        router = c.get("router") or "noisy_top_k"
        router_args = c.get("router_args") or {}
        if not isinstance(router, str) or router not in routers.ROUTERS:
            raise ValueError(
                "Can only count routers given by name, one of "
                f"{sorted(routers.ROUTERS)}, received router={router!r}.")
        router_class = routers.ROUTERS[router]
        # Every router's gate is W_g [d, E]; noisy top-k adds W_noise in
        # training, strictly balanced its thresholds [E] (no ops).
        gating = gating_ops = d * experts
        if router == "noisy_top_k" and _argument(router_class, router_args,
                                                 "noisy"):
            gating = gating_ops = 2 * d * experts
        elif router == "strictly_balanced":
            gating += experts
        if routers.takes_k(router_class):
            used = c.get("k") or _argument(router_class, router_args, "k")
        elif router_class.fills_expert_slots:  # c experts per token
            used = _argument(router_class, router_args, "capacity_factor")
        else:
            used = router_class.k
    networks = experts + residual
    ops = round((used + residual) * per_expert + gating_ops)
    return networks * (per_expert + bias), gating, ops


def _argument(router_class, router_args, name):
    """A router's argument: given in `router_args`, else its default."""
    if name in router_args:
        return router_args[name]
    return inspect.signature(router_class.__init__).parameters[name].default
