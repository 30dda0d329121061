"""The value every router returns: the one interface between routing and dispatch."""

from typing import Any
from typing import NamedTuple

import keras


class RoutingResult(NamedTuple):
    """What a router decided for a macro-batch of N tokens over E experts.

    Attributes:
        expert_indices: int32 [N, k], the experts chosen for each token, in
            decreasing order of preference (column 0 is the first choice).
        expert_weights: float32 [N, k], the non-zero gate values G(x) of those
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


def routing_result_spec(num_tokens, k, num_experts, loss_names):
    """The symbolic `RoutingResult` of a router: its `compute_output_spec`."""
    tensor = keras.KerasTensor
    return RoutingResult(
        expert_indices=tensor((num_tokens, k), dtype="int32"),
        expert_weights=tensor((num_tokens, k), dtype="float32"),
        importance=tensor((num_experts,), dtype="float32"),
        load=tensor((num_experts,), dtype="float32"),
        auxiliary_losses={name: tensor((), dtype="float32")
                          for name in loss_names})


def check_token_matrix_shape(router_name, input_shape):
    """Returns d of a router's [tokens, d] input shape, or raises ValueError."""
    if len(input_shape) != 2 or input_shape[-1] is None:
        raise ValueError(
            f"`inputs` of {router_name} must have shape [tokens, d] with a "
            f"known d, received shape {tuple(input_shape)}.")
    return input_shape[-1]
