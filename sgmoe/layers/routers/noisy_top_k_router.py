"""Noisy top-k gating of Shazeer et al. 2017 (§2.1, §4, Appendix A)."""

import math
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import _random
from sgmoe.layers import balancing
from sgmoe.layers.routers.router import Router
from sgmoe.layers.routers.routing_result import RoutingResult
from sgmoe.layers.routers.top_k import top_k_per_token


def normal_cdf(x):
    """Phi(x), the standard normal cumulative distribution function."""
    return 0.5 * (1.0 + ops.erf(x / math.sqrt(2.0)))


def probability_in_top_k(clean_logits, noisy_logits, noise_stddev, kth_value,
                         next_value):
    """P(x, i) [N, E]: the chance that expert i is in the top k of H(x) when
    only its own noise is drawn again (the paper's equation 9).

    Args:
        clean_logits: x W_g, [N, E].
        noisy_logits: H(x), [N, E].
        noise_stddev: the noise scale of H(x), [N, E].
        kth_value: the k-th highest value of H(x) per token, [N, 1].
        next_value: the (k+1)-th highest value of H(x) per token, [N, 1].

    Any leading shape works in place of [N].
    """
    # kth_excluding(H, k, i) is the (k+1)-th highest value of H when i is
    # among the top k (H_i strictly above the (k+1)-th value), and the k-th
    # highest otherwise. At ties the two cases give the same value.
    in_top_k = ops.greater(noisy_logits, next_value)
    threshold = ops.where(in_top_k, next_value, kth_value)
    return normal_cdf((clean_logits - threshold) / noise_stddev)


def check_noisy_gate_arguments(noisy, importance_weight, load_weight,
                               noise_epsilon):
    """(noisy, importance_weight, load_weight, noise_epsilon) of a noisy
    top-k gate, checked: the weights and the epsilon >= 0 (ValueError
    naming the argument)."""
    return (bool(noisy),
            _validation.check_non_negative_float("importance_weight",
                                                 importance_weight),
            _validation.check_non_negative_float("load_weight", load_weight),
            _validation.check_non_negative_float("noise_epsilon",
                                                 noise_epsilon))


class TopKGates(NamedTuple):
    """The result of `noisy_top_k` for tokens [..., E].

    Attributes:
        expert_indices: int32 [..., k], the k experts of highest H(x).
        expert_weights: float32 [..., k], their gate values G(x).
        logits: H(x) [..., E] (with noise when noise was drawn).
        probability_in_top_k: P(x, i) [..., E] when noise was drawn, else None
            (the load is then a count).
    """

    expert_indices: Any
    expert_weights: Any
    logits: Any
    probability_in_top_k: Any


def noisy_top_k(clean_logits, k, noise_logits=None, noise_epsilon=1e-2,
                seed_generator=None):
    """Noisy top-k gates of the paper for logits over the last axis.

    H(x) = clean_logits + StandardNormal() * (Softplus(noise_logits) +
    noise_epsilon), or clean_logits when `noise_logits` is None; the gates
    are Softmax(KeepTopK(H(x), k)), or for k = 1 the chosen expert's
    probability under Softmax(H(x)) (see `NoisyTopKRouter`).

    Args:
        clean_logits: x W_g, float32 [..., E].
        k: static number of experts per token.
        noise_logits: x W_noise [..., E], or None for no noise.
        noise_epsilon: floor of the noise scale.
        seed_generator: a `keras.random.SeedGenerator` for the noise.

    Returns:
        A `TopKGates`.
    """
    num_experts = clean_logits.shape[-1]
    if noise_logits is not None:
        noise_stddev = ops.softplus(noise_logits) + noise_epsilon
        logits = clean_logits + noise_stddev * _random.standard_normal(
            ops.shape(clean_logits), seed_generator)
    else:
        logits = clean_logits

    has_next = noise_logits is not None and k < num_experts
    # The (k+1)-th value is needed only for the load's probabilities.
    ranked_values, ranked_indices = top_k_per_token(
        logits, k + 1 if has_next else k)
    top_values = ranked_values[..., :k]
    expert_indices = ranked_indices[..., :k]
    if k == 1:
        weights = ops.take_along_axis(ops.softmax(logits, axis=-1),
                                      expert_indices, axis=-1)
    else:
        weights = ops.softmax(top_values, axis=-1)

    probability = None
    if has_next:
        probability = probability_in_top_k(
            clean_logits, logits, noise_stddev,
            kth_value=ranked_values[..., k - 1:k],
            next_value=ranked_values[..., k:k + 1])
    return TopKGates(expert_indices, weights, logits, probability)


@keras.saving.register_keras_serializable(package="sgmoe")
class NoisyTopKRouter(Router):
    """Noisy top-k gating with the importance and load balancing losses.

    Shazeer et al. 2017, "Outrageously Large Neural Networks: The
    Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538.

    For a token x:

        H(x)_i = (x W_g)_i + StandardNormal() * Softplus((x W_noise)_i)
        G(x)   = Softmax(KeepTopK(H(x), k))

    The noise is added only in training. The balancing losses, added with
    `add_loss` in training, are

        L_importance = importance_weight * CV(Importance(X))^2,
            Importance(X) = sum_x G(x)
        L_load = load_weight * CV(Load(X))^2,
            Load(X)_i = sum_x P(x, i),
            P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i))
                          / Softplus((x W_noise)_i))

    where kth_excluding(v, k, i) is the k-th highest component of v leaving
    out component i, and CV^2 uses the population variance. P(x, i) is the
    probability that expert i is in the top k when only its own noise is
    redrawn, so Load is a smooth, unbiased estimate of the number of tokens
    each expert receives. Without noise (inference, or `noisy=False`) the load
    is the count of tokens routed to each expert and carries no gradient.

    Like the paper's published implementation, `noise_epsilon` is added to
    the softplus to keep the noise scale away from zero; it is added in H and
    in P alike, so the load estimator stays unbiased. `noise_epsilon=0` gives
    the equations above verbatim.

    W_g (`kernel`) and W_noise (`noise_kernel`) start at zero (Appendix
    A): every expert starts equally likely and the noise scale starts at
    softplus(0) + epsilon.

    With k = 1, Softmax over a single kept value is identically 1, so the gate
    would carry no gradient to W_g. For k = 1 this layer therefore uses the
    gate of Switch Transformer (Fedus et al. 2021): the chosen expert's weight
    is its probability under the softmax of H(x) over all experts, which
    trains W_g through the task loss (and through L_importance); with
    `noisy=True` the load loss trains W_g and W_noise as well. For k > 1 the
    gates are exactly the paper's.

    The layer always computes in float32 (its weights are float32 and inputs
    are cast), also under a mixed-precision policy: the top-k and softmax are
    sensitive to rounding.

    Args:
        num_experts: number of experts E (None: set by the MoE layer).
        k: experts per token, 1 <= k <= num_experts.
        noisy: whether to add the trainable Gaussian noise in training.
        importance_weight: w_importance, weight of L_importance (>= 0).
        load_weight: w_load, weight of L_load (>= 0).
        noise_epsilon: added to Softplus((x W_noise)_i) (>= 0).
        z_loss_weight: weight of the router z-loss of ST-MoE (Zoph et al.
            2022), z_loss_weight * mean_x (logsumexp_i H(x)_i)^2 (>= 0;
            0, the default, leaves it out as the paper does).
        kernel_initializer: initializer of W_g; None means zeros.
        seed: seed of the noise.
        **kwargs: the other `Router` arguments (`z_loss_weight`,
            `kernel_initializer`, `seed`) and base layer arguments.

    Call arguments:
        inputs: float tensor [N, d], the tokens of the macro-batch.
        training: Python or tensor boolean; noise and losses only when true.

    Returns:
        A `RoutingResult` with `expert_indices` [N, k], `expert_weights`
        [N, k], `importance` [E], `load` [E] and `auxiliary_losses`
        {"importance_loss", "load_loss"}.

    Example:

    >>> router = NoisyTopKRouter(num_experts=8, k=2)
    >>> routing = router(keras.random.normal((10, 16)), training=True)
    >>> tuple(routing.expert_indices.shape), tuple(routing.load.shape)
    ((10, 2), (8,))
    """

    loss_names = ("importance_loss", "load_loss")
    default_kernel_initializer = "zeros"

    def __init__(
        self,
        num_experts=None,
        k=4,
        noisy=True,
        importance_weight=0.1,
        load_weight=0.1,
        noise_epsilon=1e-2,
        **kwargs,
    ):
        self.k = _validation.check_positive_int("k", k)
        super().__init__(num_experts, **kwargs)
        (self.noisy, self.importance_weight, self.load_weight,
         self.noise_epsilon) = check_noisy_gate_arguments(
            noisy, importance_weight, load_weight, noise_epsilon)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def check_num_experts(self, num_experts):
        _validation.check_top_k(self.k, num_experts)

    def build(self, input_shape):
        super().build(input_shape)
        if self.noisy:
            self.noise_kernel = self.add_weight(
                name="noise_kernel", shape=self.kernel.shape,
                initializer="zeros", dtype="float32", autocast=False)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        noisy = self.noisy and bool(training)
        gates = noisy_top_k(
            ops.matmul(x, self.kernel), self.k,
            noise_logits=ops.matmul(x, self.noise_kernel) if noisy else None,
            noise_epsilon=self.noise_epsilon,
            seed_generator=self.seed_generator)
        expert_indices = gates.expert_indices
        expert_weights = gates.expert_weights
        importance = balancing.count_per_expert(
            expert_indices, self.num_experts, weights=expert_weights)
        if gates.probability_in_top_k is not None:
            load = ops.sum(gates.probability_in_top_k, axis=0)
        else:
            load = balancing.count_per_expert(expert_indices, self.num_experts)

        auxiliary_losses = self.add_losses(
            balancing.importance_and_load_losses(
                importance, load, self.importance_weight, self.load_weight),
            gates.logits, training)
        return RoutingResult(expert_indices, expert_weights, importance, load,
                             auxiliary_losses)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, NoisyTopKRouter)}
