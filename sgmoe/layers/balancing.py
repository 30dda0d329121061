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


def importance_and_load_losses(importance, load, importance_weight,
                               load_weight):
    """The paper's balancing losses (§4, Appendix A), by name:
    {"importance_loss": w_importance CV(Importance)^2,
     "load_loss": w_load CV(Load)^2}."""
    return {"importance_loss": importance_weight * cv_squared(importance),
            "load_loss": load_weight * cv_squared(load)}


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


def load_balancing_loss(first_choice, probabilities, num_groups=1):
    """E * sum_e f_e * P_e, averaged over groups of consecutive tokens.

    The balancing loss of Switch Transformer (Fedus et al. 2021, eq. 4; one
    group) and of GShard (Lepikhin et al. 2020, E^2 * mean_e(f_e * P_e) per
    group): f_e is the fraction of a group's tokens whose first choice is
    expert e, P_e the mean router probability of e over the group. It is 1
    under perfectly uniform routing. The one-hot is [N, E], like the
    probabilities the router already holds.

    Args:
        first_choice: int [N], each token's first expert.
        probabilities: float32 [N, E], the router's softmax.
        num_groups: G, which divides N.
    """
    num_experts = probabilities.shape[-1]
    grouped_shape = (num_groups, -1, num_experts)
    fraction_routed = ops.mean(ops.reshape(
        ops.one_hot(first_choice, num_experts), grouped_shape), axis=1)
    mean_probability = ops.mean(ops.reshape(probabilities, grouped_shape),
                                axis=1)  # [G, E]
    return num_experts * ops.mean(
        ops.sum(fraction_routed * mean_probability, axis=-1))


def z_loss(logits, weight):
    """Router z-loss of ST-MoE (Zoph et al. 2022, eq. 5).

    weight * mean over tokens of logsumexp(logits)^2: keeps router logits
    small, which makes the softmax numerically stable in low precision.

    Args:
        logits: float [N, E].
        weight: float.
    """
    return weight * ops.mean(ops.square(ops.logsumexp(logits, axis=-1)))
