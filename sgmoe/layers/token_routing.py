"""Per-token routing of a MoE layer, for inspection."""

from typing import Any
from typing import NamedTuple

from keras import ops


class TokenRouting(NamedTuple):
    """The experts a MoE layer sends each token to, and their gate values.

    What `MoELayer.route` returns: the inference-mode routing (no gating
    noise) of the tokens of an input [..., d], in the input's leading
    shape. The paper's Table 9 lists, per expert, the tokens with the
    highest gate values: these are those values.

    Attributes:
        expert_indices: int32 [..., m], the experts serving each token,
            in decreasing order of gate value; -1 pads a token served by
            fewer than m experts. m is k for token-choice routers (E for
            strictly balanced gating, whose mask may keep any number),
            k_primary * k_secondary for the hierarchical MoE (expert j of
            group i is i * experts_per_group + j), and E for expert-choice
            routing, where a token is served by any number of experts.
        expert_weights: float32 [..., m], the gate value of each expert
            for the token (the weight of its output in the combination);
            0 where the index is -1.
    """

    expert_indices: Any
    expert_weights: Any


def from_top_k(expert_indices, expert_weights, num_experts):
    """[N, m] choices of a token-choice router -> (indices, weights),
    sorted by decreasing weight; choices outside [0, E) or with gate 0
    (which serve nothing) become padding."""
    weights = ops.cast(expert_weights, "float32")
    valid = ops.logical_and(
        ops.logical_and(expert_indices >= 0, expert_indices < num_experts),
        weights > 0)
    weights = ops.where(valid, weights, -1.0)
    return _sorted(ops.cast(expert_indices, "int32"), weights)


def from_expert_slots(slot_token, slot_weight, num_tokens, num_experts):
    """Expert-choice slots [E, C] -> per-token (indices, weights) [N, E].

    Slot weight 0 marks an empty slot. The [N, E] result is the price of
    a per-token view of expert choice (any expert may take any token).
    """
    capacity = ops.shape(slot_token)[1]
    experts = ops.repeat(ops.arange(num_experts, dtype="int32"), capacity)
    slot_weight = ops.reshape(ops.cast(slot_weight, "float32"), (-1,))
    filled = slot_weight > 0
    # Empty slots go to an extra row N that is cut off.
    tokens = ops.where(filled, ops.reshape(slot_token, (-1,)), num_tokens)
    flat = tokens * num_experts + experts
    size = (num_tokens + 1) * num_experts
    weights = ops.segment_sum(slot_weight, flat, num_segments=size)
    chosen = ops.segment_sum(ops.cast(filled, "float32"), flat,
                             num_segments=size)
    weights = ops.reshape(weights, (num_tokens + 1, num_experts))[:-1]
    chosen = ops.reshape(chosen, (num_tokens + 1, num_experts))[:-1]
    indices = ops.broadcast_to(ops.arange(num_experts, dtype="int32"),
                               ops.shape(weights))
    return _sorted(indices, ops.where(chosen > 0, weights, -1.0))


def _sorted(indices, weights):
    """Sorts each row by decreasing weight; weight -1 marks padding."""
    order = ops.argsort(-weights, axis=-1)
    indices = ops.take_along_axis(indices, order, axis=-1)
    weights = ops.take_along_axis(weights, order, axis=-1)
    padding = weights < 0
    return (ops.where(padding, -1, indices),
            ops.where(padding, 0.0, weights))
