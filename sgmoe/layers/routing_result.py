"""The value every router returns: the one interface between routing and dispatch."""

from typing import Any
from typing import NamedTuple


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
