"""Load-balancing statistics shared by routers (Shazeer et al. 2017, §4)."""

from keras import ops

# Keeps CV^2 finite when every expert has zero importance or load.
CV_EPSILON = 1e-10


def cv_squared(values):
    """Squared coefficient of variation of a vector: var / mean^2.

    Uses the population variance (ddof=0), as the paper's CV does, and adds a
    small epsilon to the denominator so an all-zero vector gives 0.

    Args:
        values: float tensor [E].

    Returns:
        A float scalar.
    """
    values = ops.cast(values, "float32")
    mean = ops.mean(values)
    return ops.var(values) / (ops.square(mean) + CV_EPSILON)


def count_per_expert(expert_indices, num_experts, weights=None):
    """Sums `weights` (default 1) of each (token, choice) into its expert: [E].

    A segment sum, so the cost is O(N*k), not O(N*k*E) as a one-hot sum would be.
    """
    flat_indices = ops.reshape(expert_indices, (-1,))
    if weights is None:
        flat_weights = ops.ones_like(flat_indices, dtype="float32")
    else:
        flat_weights = ops.reshape(ops.cast(weights, "float32"), (-1,))
    return ops.segment_sum(flat_weights, flat_indices, num_segments=num_experts)


def z_loss(logits, weight):
    """Router z-loss of ST-MoE (Zoph et al. 2022, eq. 5).

    weight * mean over tokens of logsumexp(logits)^2: keeps router logits
    small, which makes the softmax numerically stable in low precision.

    Args:
        logits: float [N, E].
        weight: float.
    """
    return weight * ops.mean(ops.square(ops.logsumexp(logits, axis=-1)))
