"""Expert pruning: keep the most used experts of every MoE layer.

DeepSpeed-MoE's inference discussion (Rajbhandari et al. 2022) asks how
much of a trained MoE's quality its most used experts carry. Pruning here
keeps, in each MoE layer, the experts that served the most token-expert
assignments on a data sample: their expert weights, and their columns of
the gate, so the router ranks and normalizes over the kept experts only
(Softmax(KeepTopK(H(x), k)) over the kept logits). The pruned model is a
model of the same class with fewer experts, ready to save or fine-tune.
"""

import keras
import numpy as np
from keras import ops

from sgmoe import _validation
from sgmoe.layers.hierarchical_mixture_of_experts import (
    HierarchicalMixtureOfExperts)
from sgmoe.layers.moe_layer import find_moe_layers
from sgmoe.models import moe_config


def expert_usage(model, batches):
    """Assignments routed to each expert of each MoE layer, over `batches`.

    Each batch goes through the model in inference (no noise, and by
    default no capacity, so every assignment counts); the count of an
    expert is the assignments its router gave it, computed or dropped.

    Args:
        model: a model with MoE layers.
        batches: an iterable of model inputs, or of (inputs, targets)
            tuples (a `tf.data.Dataset` works).

    Returns:
        {layer name (see `find_moe_layers`): float64 NumPy array [E]}.
    """
    layers = find_moe_layers(model)
    usage = {name: np.zeros(layer.num_experts) for name, layer
             in layers.items()}
    seen = False
    for batch in batches:
        inputs = batch[0] if isinstance(batch, tuple) else batch
        model(inputs, training=False)
        seen = True
        for name, layer in layers.items():
            usage[name] += (ops.convert_to_numpy(layer.expert_dispatched)
                            + ops.convert_to_numpy(layer.expert_dropped))
    if not seen:
        raise ValueError("`batches` is empty: expert usage needs data.")
    return usage


def most_used_experts(usage, num_experts, expert_groups=1):
    """The `num_experts` most used experts, in increasing index order.

    With `expert_groups` G > 1 (a hierarchical MoE), experts are G
    consecutive groups, and each group keeps its num_experts / G most used.
    Ties go to the lower index.
    """
    usage = np.asarray(usage, np.float64)
    if num_experts % expert_groups:
        raise ValueError(
            f"`num_experts`={num_experts} must be a multiple of the "
            f"layer's expert_groups={expert_groups}.")
    per_group = usage.reshape(expert_groups, -1)
    keep = num_experts // expert_groups
    kept = []
    for group, counts in enumerate(per_group):
        order = np.argsort(-counts, kind="stable")[:keep]
        kept.extend(sorted(group * per_group.shape[1] + order))
    return np.asarray(kept, np.int64)


def prune_experts(model, num_experts, usage):
    """A copy of an sgmoe model keeping the most used experts.

    Args:
        model: a built `MoELanguageModel` or `MoETranslationModel` (a
            model whose MoE configurations are the constructor arguments
            `MOE_ARGUMENTS`).
        num_experts: experts each MoE layer keeps; for a hierarchical MoE,
            a multiple of its expert groups (each group keeps its share).
        usage: {layer name: [E] counts}, from `expert_usage`.

    Returns:
        A new model of the same class, built, whose MoE layers have
        `num_experts` experts: the kept experts' weights and gate columns,
        and every other weight of `model`. Its MoE statistics start at 0.

    Example:

    usage = expert_usage(model, validation_batches.take(20))
    small = prune_experts(model, 64, usage)
    small.save_to_preset("/tmp/lm_64_experts")
    """
    num_experts = _validation.check_positive_int("num_experts", num_experts)
    if not model.built:
        raise ValueError("Build the model before pruning its experts.")
    layers = find_moe_layers(model)
    if set(usage) != set(layers):
        raise ValueError(
            f"`usage` must have one entry per MoE layer, {sorted(layers)}, "
            f"received {sorted(usage)}.")
    for name, layer in layers.items():
        if num_experts > layer.num_experts:
            raise ValueError(
                f"`num_experts`={num_experts} is more than the "
                f"{layer.num_experts} experts of MoE layer {name!r}.")
        if np.shape(usage[name]) != (layer.num_experts,):
            raise ValueError(
                f"`usage[{name!r}]` must have shape ({layer.num_experts},), "
                f"received {np.shape(usage[name])}.")
    config = model.get_config()
    for argument in type(model).MOE_ARGUMENTS:
        if config.get(argument) is not None:
            config[argument] = _pruned_moe_config(config[argument],
                                                  num_experts, argument)
    if config.get("moe_per_layer") is not None:  # the LM's per-layer MoEs
        config["moe_per_layer"] = [
            _pruned_moe_config(moe_config.layer_config(
                config["moe"], config["moe_per_layer"], index), num_experts,
                f"moe_per_layer[{index}]")
            for index in range(len(config["moe_per_layer"]))]
    pruned = type(model).from_config(config)
    pruned.build(type(model).preset_input_shape)
    pruned_layers = find_moe_layers(pruned)
    moe_variables, in_moe_layers = {}, set()
    for name, layer in layers.items():
        in_moe_layers |= {id(variable) for variable in layer.variables}
        groups = (layer.expert_groups
                  if isinstance(layer, HierarchicalMixtureOfExperts) else 1)
        kept = most_used_experts(usage[name], num_experts, groups)
        for old, new, value in _pruned_layer_values(layer,
                                                    pruned_layers[name], kept):
            moe_variables[id(old)] = (new, value)
    pruned_variables = {}
    for old, new in zip(model.variables, pruned.variables):
        if id(old) in moe_variables:
            target, value = moe_variables[id(old)]
            pruned_variables[id(target)] = value
        elif (id(old) not in in_moe_layers
              and tuple(old.shape) == tuple(new.shape)):
            pruned_variables[id(new)] = old
    for variable in pruned.variables:
        if id(variable) in pruned_variables:
            variable.assign(pruned_variables[id(variable)])
    pruned.vocabulary = getattr(model, "vocabulary", None)
    return pruned


def _pruned_moe_config(config, num_experts, argument):
    config = dict(config)
    if "expert_groups" in config:
        groups = config["expert_groups"]
        if num_experts % groups:
            raise ValueError(
                f"`num_experts`={num_experts} must be a multiple of "
                f"{argument}'s expert_groups={groups}.")
        config["experts_per_group"] = num_experts // groups
        return config
    config["num_experts"] = num_experts
    router = config.get("router")
    if isinstance(router, dict) and "config" in router:
        config["router"] = dict(router, config=dict(
            router["config"], num_experts=num_experts))
    if config.get("k") is not None and config["k"] > num_experts:
        raise ValueError(
            f"`num_experts`={num_experts} is less than {argument}'s "
            f"k={config['k']}.")
    return config


def _pruned_layer_values(layer, pruned_layer, kept):
    """(old variable, new variable, new value) of a MoE layer's experts and
    gates; its statistics are left out (they start at zero)."""
    statistics = {id(v) for v in list(layer.last_call_statistics().values())
                  + layer.statistics_added_later}
    pairs = [(old, new) for old, new in zip(layer.variables,
                                            pruned_layer.variables)
             if id(old) not in statistics]
    experts = {id(v) for v in layer.experts.variables}
    if isinstance(layer, HierarchicalMixtureOfExperts):
        # Gates of the second level [G, d, E_g]: each group's kept columns.
        local = (kept % layer.experts_per_group).reshape(
            layer.expert_groups, -1)
        by_group = {id(v) for v in (layer.secondary_w_gate,
                                    getattr(layer, "secondary_w_noise", None))
                    if v is not None}
        by_column = set()
    else:
        # Router weights hold one entry per expert on their last axis
        # (W_g, W_noise [d, E], a threshold [E]).
        by_group = set()
        by_column = {id(v) for v in layer.router.variables
                     if v.shape and v.shape[-1] == layer.num_experts
                     and keras.backend.standardize_dtype(
                         v.dtype).startswith("float")}
    for old, new in pairs:
        value = ops.convert_to_numpy(old)
        if id(old) in experts:
            value = value[kept]
        elif id(old) in by_group:
            value = np.stack([group[:, columns] for group, columns
                              in zip(value, local)])
        elif id(old) in by_column:
            value = value[..., kept]
        if tuple(value.shape) != tuple(new.shape):
            raise ValueError(
                f"Cannot prune {old.path} of shape {tuple(old.shape)} to "
                f"{tuple(new.shape)}.")
        yield old, new, value
