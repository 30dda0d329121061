"""What routers return: the interface between routing and dispatch."""

from typing import Any
from typing import NamedTuple

import keras


class RoutingResult(NamedTuple):
    """What a token-choice router decided for N tokens over E experts.

    Each token picks k experts. Routers that fill each expert's slots
    themselves return an `ExpertSlots` instead; the dispatcher
    (`dispatch.plan_routing`) turns either into a plan, so a MoE layer never
    needs to know which router it has (see `Router`).

    Attributes:
        expert_indices: int32 [N, k], the experts chosen for each token, in
            decreasing order of preference (column 0 is the first choice).
            An index outside [0, E) means "no expert" for that choice (e.g.
            GShard's second expert when random routing skips it).
        expert_weights: float32 [N, k], the gate values G(x) of those
            experts; the MoE output is the weighted sum of their outputs.
        importance: float32 [E], Importance(X) = sum over tokens of G(x).
        load: float32 [E], the (smooth, when noisy) number of tokens sent to
            each expert.
        auxiliary_losses: dict mapping a loss name to its weighted float32
            scalar value (computed on every call; added to the layer's losses
            only in training).
    """

    expert_indices: Any
    expert_weights: Any
    importance: Any
    load: Any
    auxiliary_losses: Any


class ExpertSlots(NamedTuple):
    """What a router that fills expert slots itself decided (expert choice).

    Attributes:
        slot_token: int32 [E, C], the token in each of expert e's C slots.
        slot_weight: float32 [E, C], its gate value; 0 marks an empty slot.
        importance: float32 [E], the sum of each expert's gate values.
        load: float32 [E], the number of tokens each expert took.
        auxiliary_losses: as in `RoutingResult`.
    """

    slot_token: Any
    slot_weight: Any
    importance: Any
    load: Any
    auxiliary_losses: Any


def routing_result_spec(num_tokens, k, num_experts, loss_names):
    """The symbolic `RoutingResult` of a router: its `compute_output_spec`."""
    return _spec(RoutingResult, (num_tokens, k), num_experts, loss_names)


def expert_slots_spec(num_experts, capacity, loss_names):
    """The symbolic `ExpertSlots` of a router: its `compute_output_spec`."""
    return _spec(ExpertSlots, (num_experts, capacity), num_experts,
                 loss_names)


def _spec(result_type, assignment_shape, num_experts, loss_names):
    # Both result types start with int32 ids and float32 weights of the
    # assignments, then the statistics and the losses.
    tensor = keras.KerasTensor
    ids, weights = result_type._fields[:2]
    return result_type(**{
        ids: tensor(assignment_shape, dtype="int32"),
        weights: tensor(assignment_shape, dtype="float32"),
        "importance": tensor((num_experts,), dtype="float32"),
        "load": tensor((num_experts,), dtype="float32"),
        "auxiliary_losses": {name: tensor((), dtype="float32")
                             for name in loss_names}})
