"""Overrides of a model configuration by dotted keys, checked key by key.

A researcher changes any argument of a preset from one string, as with
tensor2tensor's `--hparams` or flax's `--config.` flags:

    moe.router=switch,moe.capacity_factor=2.0,dropout=0.2

A key is a constructor argument of the model; `moe.<name>` is an argument
of the model's MoE layers (`MixtureOfExperts` or
`HierarchicalMixtureOfExperts`, see `sgmoe.models.moe_config`) and
`moe.router_args.<name>` one of its router. `moe` means every MoE layer of
the model: the language model's `moe` (and the same keys where its
`moe_per_layer` sets them per layer), or both `encoder_moe` and
`decoder_moe` of the translation model (which also take their own keys).
A new `moe.router` leaves out the old router's `router_args`, and `k`
when the new router fixes it (Switch routes to one expert), unless the
overrides set them too.
"""

import ast
import re

from sgmoe import _validation
from sgmoe.layers import routers
from sgmoe.layers.hierarchical_mixture_of_experts import (
    HierarchicalMixtureOfExperts)
from sgmoe.layers.mixture_of_experts import MixtureOfExperts
from sgmoe.models import moe_config
from sgmoe.models.moe_config import merge  # noqa: F401 (public here too)

# `a.b=1,c=x`: a comma starts a new override only before `key=`, so that
# values may hold commas (`layer_types=[lstm,moe]` is not split).
_SEPARATOR = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_overrides(text):
    """The nested dict of an override string.

    Values are Python literals (numbers, quoted strings, lists, tuples,
    dicts), `true`/`false`/`none` in any case, or else plain strings.

    >>> parse_overrides("moe.router=switch,moe.capacity_factor=2,dropout=0")
    {'moe': {'router': 'switch', 'capacity_factor': 2}, 'dropout': 0}
    >>> parse_overrides("layer_types=[lstm,moe],moe.noisy=false")
    {'layer_types': ['lstm', 'moe'], 'moe': {'noisy': False}}

    Raises:
        ValueError: an item that is not `key=value`, or a key set twice.
    """
    overrides = {}
    for item in _SEPARATOR.split(text.strip()) if text.strip() else []:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not _KEY.match(key):
            raise ValueError(
                f"Overrides must be comma-separated key=value items with "
                f"dotted keys (e.g. moe.router=switch), received {item!r}.")
        *path, name = key.split(".")
        node = overrides
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {key!r} conflicts with a value "
                                 f"set for {part!r}.")
        if name in node:
            raise ValueError(f"Override {key!r} is given twice.")
        node[name] = _parse_value(value.strip())
    return overrides


def _parse_value(text):
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.startswith("[") and text.endswith("]"):  # [lstm,moe]
        return [_parse_value(part.strip())
                for part in text[1:-1].split(",") if part.strip()]
    return text


def apply_overrides(model_class, config, overrides):
    """`config` updated by `overrides`, every key checked.

    Args:
        model_class: the model class (its constructor arguments are the
            valid keys; its `MOE_ARGUMENTS` name its MoE configurations).
        config: the model's constructor arguments (a preset's).
        overrides: a nested dict, as `parse_overrides` returns. A dict
            value updates a dict argument key by key; any other value
            replaces.

    Returns:
        A new config dict.

    Raises:
        ValueError: naming the first unknown key and listing the valid
            ones, or a MoE key for a model without that MoE.
    """
    merged = dict(config)
    valid = _arguments(model_class)
    moe_names = tuple(getattr(model_class, "MOE_ARGUMENTS", ()))
    valid_keys = ", ".join(sorted(valid | ({"moe"} if moe_names else set())))
    for key, value in overrides.items():
        if key == "moe" and "moe" not in valid and moe_names:
            targets = [name for name in moe_names if merged.get(name)]
            if not targets:
                raise ValueError(
                    f"Override 'moe': the model has no MoE layer (its "
                    f"{' and '.join(moe_names)} are None).")
        elif key not in valid:
            raise ValueError(
                f"Unknown override {key!r}: not an argument of "
                f"{model_class.__name__}; valid keys: {valid_keys}.")
        else:
            targets = [key]
        for target in targets:
            if target in moe_names:
                merged[target] = _override_moe(target, merged.get(target),
                                               value, key)
                if target == "moe" and merged.get("moe_per_layer"):
                    # Every MoE layer: also where a layer sets the key.
                    merged["moe_per_layer"] = [
                        merge(layer, {name: value[name] for name in value
                                      if name in layer})
                        if isinstance(value, dict) else layer
                        for layer in merged["moe_per_layer"]]
            elif isinstance(value, dict) and isinstance(merged.get(target),
                                                        dict):
                merged[target] = merge(merged[target], value)
            else:
                merged[target] = value
    return merged


def _override_moe(name, config, value, key):
    if not isinstance(value, dict):
        return value  # a whole new configuration, or None
    if not config:
        raise ValueError(
            f"Override {key!r}: the model's {name} is None (no MoE layer to "
            "change); set the whole configuration instead.")
    merged = merge(config, value)
    if "router" in value and value["router"] != config.get("router"):
        # The old router's arguments are not the new one's: keep only
        # those the override gives.
        if "router_args" not in value:
            merged.pop("router_args", None)
        if ("k" not in value and isinstance(value["router"], str)
                and value["router"] in routers.ROUTERS
                and not routers.takes_k(routers.ROUTERS[value["router"]])):
            merged.pop("k", None)
    hierarchical = moe_config.is_hierarchical(merged)
    layer_class = (HierarchicalMixtureOfExperts if hierarchical
                   else MixtureOfExperts)
    valid = _arguments(layer_class) | {"num_groups"}
    for sub_key, sub_value in value.items():
        if sub_key not in valid:
            raise ValueError(
                f"Unknown override '{key}.{sub_key}': not an argument of "
                f"{layer_class.__name__}; valid keys: "
                f"{', '.join(sorted(valid - {'num_groups'}))}.")
        if sub_key == "router_args" and isinstance(sub_value, dict):
            _check_router_args(merged.get("router", "noisy_top_k"),
                               sub_value, f"{key}.router_args")
    return merged


def _check_router_args(router, router_args, key):
    if not isinstance(router, str) or router not in routers.ROUTERS:
        return  # the layer reports an unknown router by name
    router_class = routers.ROUTERS[router]
    valid = _arguments(router_class) - {"num_experts"}
    for name in router_args:
        if name not in valid:
            raise ValueError(
                f"Unknown override '{key}.{name}': not an argument of "
                f"{router_class.__name__} (router={router!r}); valid keys: "
                f"{', '.join(sorted(valid))}.")


def _arguments(cls):
    """The named constructor arguments of `cls` (its `**kwargs` followed
    up to Keras's own layer)."""
    return _validation.signature_arguments(cls)[0]
