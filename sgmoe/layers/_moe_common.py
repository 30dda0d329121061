"""Parts every Mixture-of-Experts layer shares: experts, token flattening and
the monitoring variables."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe.layers import dispatch
from sgmoe.layers.feed_forward_experts import FeedForwardExperts


def set_expert_arguments(moe, expert_hidden_dim, capacity_factor,
                         eval_capacity_factor, min_capacity,
                         output_activation, output_dim, expert_activation,
                         use_bias, kernel_initializer, rematerialize_experts,
                         expert_dropout):
    """Validates and keeps the expert and capacity arguments of a MoE layer."""
    moe.expert_hidden_dim = _validation.check_positive_int(
        "expert_hidden_dim", expert_hidden_dim)
    moe.capacity_factor = _validation.check_positive_float(
        "capacity_factor", capacity_factor)
    moe.eval_capacity_factor = (
        None if eval_capacity_factor is None else
        _validation.check_positive_float("eval_capacity_factor",
                                         eval_capacity_factor))
    moe.min_capacity = _validation.check_positive_int("min_capacity",
                                                      min_capacity)
    moe.output_activation = keras.activations.get(output_activation)
    moe.output_dim = (None if output_dim is None else
                      _validation.check_positive_int("output_dim", output_dim))
    moe.expert_activation = keras.activations.get(expert_activation)
    moe.use_bias = bool(use_bias)
    moe.kernel_initializer = (None if kernel_initializer is None else
                              keras.initializers.get(kernel_initializer))
    moe.rematerialize_experts = bool(rematerialize_experts)
    moe.expert_dropout = _validation.check_unit_interval("expert_dropout",
                                                         expert_dropout)


def capacity_factor(moe, training):
    """The capacity factor of this call, or None for no capacity (dropless).

    Training uses `capacity_factor`; outside training `eval_capacity_factor`,
    whose default None keeps every assignment. `dropless` layers never use
    a capacity.
    """
    if moe.dropless:
        return None
    if training:
        return moe.capacity_factor
    return moe.eval_capacity_factor


def feed_forward_experts(moe, num_experts, name):
    """A `FeedForwardExperts` with the MoE layer's expert arguments."""
    return FeedForwardExperts(
        num_experts=num_experts, hidden_dim=moe.expert_hidden_dim,
        output_dim=moe.output_dim, activation=moe.expert_activation,
        use_bias=moe.use_bias, kernel_initializer=moe.kernel_initializer,
        rematerialize=moe.rematerialize_experts, dropout=moe.expert_dropout,
        seed=moe.seed, dtype=moe.dtype_policy, name=name)


def run_experts(experts, tokens, plan, training, num_tokens=None,
                place_groups=dispatch.unplaced, place_inputs=dispatch.unplaced):
    """Dispatch by `plan`, the experts, combine: tokens [N, d] -> [N, d_out].

    A dropless plan's overflow rows go through
    `experts.call_with_overflow`. `place_groups` and `place_inputs` are
    placements a distribution may ask for: of the grouped tensors (see
    `dispatch.dispatch`) and of the expert buffer.
    """
    expert_inputs = place_inputs(dispatch.dispatch(tokens, plan,
                                                   place_groups))
    if plan.overflow is None:
        return dispatch.combine(experts(expert_inputs, training=training),
                                plan, num_tokens, place_groups)
    expert_outputs, overflow_outputs = experts.call_with_overflow(
        expert_inputs, dispatch.dispatch_overflow(tokens, plan),
        training=training)
    return dispatch.combine(expert_outputs, plan, num_tokens, place_groups,
                            overflow_outputs)


def batch_shards():
    """Shards of the batch axis of the active `keras.distribution`, or 1."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    batch_axis = getattr(distribution, "batch_dim_name", None)
    if batch_axis not in mesh.axis_names:
        return 1
    return mesh.shape[mesh.axis_names.index(batch_axis)]


def distribute_tensor(layer, name, tensor):
    """`tensor` placed by the active distribution's layout for
    "<layer path>/<name>", if its layout map has one; else unchanged.

    Layers only ask: `sgmoe.distribute` decides where things live.
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return tensor
    layout = distribution.get_tensor_layout(f"{layer.path}/{name}")
    if layout is None:
        return tensor
    return keras.distribution.distribute_tensor(tensor, layout)


def input_dim(moe, input_shape):
    """The known last dimension of a MoE layer's input, or ValueError."""
    if input_shape[-1] is None:
        raise ValueError(
            f"The last dimension of `inputs` to {type(moe).__name__} must be "
            f"known, received shape {tuple(input_shape)}.")
    return input_shape[-1]


def flatten_tokens(moe, inputs):
    """[..., d] -> ([N, d] tokens, the leading shape), checking d."""
    if inputs.shape[-1] != moe.input_dim:
        raise ValueError(
            f"The last dimension of `inputs` must be {moe.input_dim} (the "
            f"size {type(moe).__name__} was built with), received inputs of "
            f"shape {tuple(inputs.shape)}.")
    return (ops.reshape(inputs, (-1, moe.input_dim)),
            tuple(ops.shape(inputs)[:-1]))


def add_statistics(moe, num_experts, loss_names):
    """Non-trainable monitoring variables: the contract monitors read.

    `expert_importance` [E], `expert_load` [E], `dropped_fraction` and
    `auxiliary_losses` {name: scalar}, holding the values of the last call.
    """

    def statistic(name, shape):
        return moe.add_weight(name=name, shape=shape, initializer="zeros",
                              dtype="float32", trainable=False)

    moe.expert_importance = statistic("expert_importance", (num_experts,))
    moe.expert_load = statistic("expert_load", (num_experts,))
    moe.dropped_fraction = statistic("dropped_fraction", ())
    moe.auxiliary_losses = {name: statistic(name, ())
                            for name in sorted(loss_names)}


def record_statistics(moe, importance, load, dropped_fraction,
                      auxiliary_losses):
    moe.expert_importance.assign(importance)
    moe.expert_load.assign(load)
    moe.dropped_fraction.assign(dropped_fraction)
    for name, variable in moe.auxiliary_losses.items():
        variable.assign(auxiliary_losses[name])


def expert_config(moe):
    """The config entries of the expert arguments every MoE layer has."""
    return {
        "expert_hidden_dim": moe.expert_hidden_dim,
        "capacity_factor": moe.capacity_factor,
        "eval_capacity_factor": moe.eval_capacity_factor,
        "min_capacity": moe.min_capacity,
        "output_activation": keras.activations.serialize(
            moe.output_activation),
        "output_dim": moe.output_dim,
        "expert_activation": keras.activations.serialize(
            moe.expert_activation),
        "use_bias": moe.use_bias,
        "kernel_initializer": (
            None if moe.kernel_initializer is None else
            keras.initializers.serialize(moe.kernel_initializer)),
        "rematerialize_experts": moe.rematerialize_experts,
        "expert_dropout": moe.expert_dropout,
    }
