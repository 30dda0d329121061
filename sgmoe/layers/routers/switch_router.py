"""Switch Transformer top-1 router (Fedus et al. 2021) with optional z-loss."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import _random
from sgmoe.layers import balancing
from sgmoe.layers.routers.router import Router
from sgmoe.layers.routers.routing_result import RoutingResult
from sgmoe.layers.routers.top_k import top_k_per_token


@keras.saving.register_keras_serializable(package="sgmoe")
class SwitchRouter(Router):
    """Top-1 routing of Switch Transformer, with its load-balancing loss.

    Fedus, Zoph and Shazeer 2021, "Switch Transformers", arXiv:2101.03961,
    §2.1-2.2. For a token x with router logits h(x) = x W_r:

        p(x) = Softmax(h(x)),   expert(x) = argmax_i p_i(x),
        gate(x) = p_expert(x)(x)

    The auxiliary loss (their equation 4) is

        L_balance = load_balancing_weight * E * sum_i f_i * P_i

    with f_i the fraction of tokens whose argmax is expert i (before any
    capacity limit) and P_i the mean router probability of expert i; it is 1
    times the weight under perfectly uniform routing. In training the router
    input is multiplied by uniform noise in [1 - jitter, 1 + jitter] (the
    paper's jitter, §2.4). With `z_loss_weight` > 0 it also adds the router
    z-loss of ST-MoE (Zoph et al. 2022, arXiv:2202.08906, eq. 5):

        L_z = z_loss_weight * mean_x (logsumexp_i h_i(x))^2

    The layer always computes in float32 (the paper's "selective
    precision"). By default W_r (`kernel`) is initialised with a truncated
    normal of standard deviation sqrt(0.1 / d) (the paper's reduced
    initialisation scale).

    Args:
        num_experts: E (None: set by the MoE layer).
        load_balancing_weight: alpha of L_balance (>= 0; paper: 0.01).
        z_loss_weight: weight of L_z (>= 0; ST-MoE used 0.001; 0 disables).
        jitter: multiplicative input noise amplitude in training (>= 0,
            < 1; 0 disables).
        kernel_initializer: initializer of W_r; None means the truncated
            normal above.
        seed: seed of the jitter and of the default kernel initializer.
        **kwargs: the other `Router` arguments (`z_loss_weight`,
            `kernel_initializer`, `seed`) and base layer arguments.

    Call arguments:
        inputs: float tensor [N, d].
        training: jitter and losses only when true.

    Returns:
        A `RoutingResult` with k = 1: `expert_indices` [N, 1],
        `expert_weights` [N, 1], `importance` (sum of gates per expert) [E],
        `load` (tokens per expert) [E], and `auxiliary_losses`
        {"load_balancing_loss"} plus "z_loss" when `z_loss_weight` > 0.

    Example:

    >>> router = SwitchRouter(num_experts=8)
    >>> tuple(router(keras.random.normal((10, 16))).expert_indices.shape)
    (10, 1)
    """

    k = 1
    loss_names = ("load_balancing_loss",)

    def __init__(
        self,
        num_experts=None,
        load_balancing_weight=0.01,
        jitter=0.0,
        **kwargs,
    ):
        super().__init__(num_experts, **kwargs)
        self.load_balancing_weight = _validation.check_non_negative_float(
            "load_balancing_weight", load_balancing_weight)
        self.jitter = _validation.check_unit_interval("jitter", jitter)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        if training and self.jitter > 0:
            x = x * _random.uniform(ops.shape(x), 1.0 - self.jitter,
                                    1.0 + self.jitter, self.seed_generator)
        logits = ops.matmul(x, self.kernel)  # [N, E]
        probabilities = ops.softmax(logits, axis=-1)
        top_probability, expert_indices = top_k_per_token(
            probabilities, 1)  # [N, 1]
        expert_weights = top_probability  # [N, 1]

        load = balancing.count_per_expert(expert_indices, self.num_experts)
        importance = balancing.count_per_expert(
            expert_indices, self.num_experts, weights=expert_weights)
        auxiliary_losses = self.add_losses({
            "load_balancing_loss": self.load_balancing_weight
            * balancing.load_balancing_loss(expert_indices[:, 0],
                                            probabilities),
        }, logits, training)
        return RoutingResult(expert_indices, expert_weights, importance, load,
                             auxiliary_losses)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, SwitchRouter)}
