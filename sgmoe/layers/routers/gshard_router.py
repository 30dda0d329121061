"""GShard top-2 router (Lepikhin et al. 2020): random routing, groups."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import _random
from sgmoe.layers import balancing
from sgmoe.layers.routers.router import Router
from sgmoe.layers.routers.routing_result import RoutingResult
from sgmoe.layers.routers.top_k import top_k_per_token

SECOND_EXPERT_POLICIES = ("all", "random", "threshold", "none")


def _check_policy(name, value):
    if value not in SECOND_EXPERT_POLICIES:
        raise ValueError(
            f"`{name}` must be one of {list(SECOND_EXPERT_POLICIES)}, "
            f"received {name}={value!r}.")
    return value


@keras.saving.register_keras_serializable(package="sgmoe")
class GShardRouter(Router):
    """Top-2 routing of GShard, with random routing and group-local balance.

    Lepikhin et al. 2020, "GShard: Scaling Giant Models with Conditional
    Computation and Automatic Sharding", arXiv:2006.16668, §2.2 and
    Algorithm 1. For a token x with router logits h(x) = x W_g:

        p(x) = Softmax(h(x)),
        e1 = argmax_i p_i(x),          g1 = p_e1(x),
        e2 = argmax_{i != e1} p_i(x),  g2 = p_e2(x),
        g1, g2 = g1 / (g1 + g2), g2 / (g1 + g2)

    The second expert is then kept or skipped by a policy: "all" keeps it,
    "none" skips it, "threshold" keeps it iff g2 > `second_expert_threshold`,
    and "random" (the paper's random routing) keeps it iff u < g2 /
    `second_expert_threshold` for u ~ Uniform[0, 1), i.e. with probability
    min(1, g2 / threshold). A skipped second expert gets index E (no
    expert: it takes no slot in dispatch) and weight 0; g1 is not
    renormalised, as in GShard.

    Tokens are split into `token_groups` groups of S = N / token_groups
    consecutive tokens. `MixtureOfExperts` reads `token_groups` and gives
    every expert its capacity per group (GShard's group-local dispatch). The
    auxiliary loss is computed per group and averaged over groups:

        L_aux = load_balancing_weight * mean_g E^2 * mean_e(f_ge * m_ge)

    with f_ge the fraction of group g's tokens whose first choice is e
    (before any capacity limit) and m_ge the mean of p_e over those tokens;
    it is 1 times the weight under perfectly uniform routing. With
    `z_loss_weight` > 0 it also adds the router z-loss of ST-MoE (Zoph et al.
    2022, arXiv:2202.08906, eq. 5):

        L_z = z_loss_weight * mean_x (logsumexp_i h_i(x))^2

    The layer always computes in float32. By default W_g is initialised with
    a truncated normal of standard deviation sqrt(0.1 / d), the reduced
    scale `SwitchRouter` uses, so routing starts near uniform.

    Args:
        num_experts: E (>= 2; None: set by the MoE layer).
        token_groups: G, the number of groups the N tokens of a call are
            split into; it must divide N.
        load_balancing_weight: weight of L_aux (>= 0; paper: 0.01).
        second_expert_policy: what happens to the second expert in training:
            "random" (default), "all", "threshold" or "none".
        eval_second_expert_policy: the same outside training; "all" by
            default, so inference is deterministic.
        second_expert_threshold: the threshold of the "threshold" and
            "random" policies (> 0; paper: 0.2).
        z_loss_weight: weight of L_z (>= 0; ST-MoE used 0.001; 0 disables).
        kernel_initializer: initializer of W_g [d, E]; None means the
            truncated normal above.
        seed: seed of the random routing draws and of the default kernel
            initializer.
        **kwargs: the other `Router` arguments (`z_loss_weight`,
            `kernel_initializer`, `seed`) and base layer arguments.

    Call arguments:
        inputs: float tensor [N, d], N divisible by `token_groups`.
        training: selects `second_expert_policy` (true) or
            `eval_second_expert_policy`; the losses are added only when true.

    Returns:
        A `RoutingResult` with k = 2: `expert_indices` [N, 2] (first and
        second expert, E where the second was skipped), `expert_weights`
        [N, 2] (normalised g1 and g2, 0 where skipped), `importance` [E] (sum
        of the kept gate values per expert), `load` [E] (kept assignments per
        expert, before capacity), and `auxiliary_losses`
        {"load_balancing_loss"} plus "z_loss" when `z_loss_weight` > 0.

    Example:

    >>> router = GShardRouter(num_experts=8, token_groups=2)
    >>> tuple(router(keras.random.normal((10, 16))).expert_indices.shape)
    (10, 2)
    """

    k = 2
    loss_names = ("load_balancing_loss",)
    saved_argument_renames = {"num_groups": "token_groups"}

    def __init__(
        self,
        num_experts=None,
        token_groups=1,
        load_balancing_weight=0.01,
        second_expert_policy="random",
        eval_second_expert_policy="all",
        second_expert_threshold=0.2,
        **kwargs,
    ):
        super().__init__(num_experts, **kwargs)
        self.token_groups = _validation.check_positive_int("token_groups",
                                                           token_groups)
        self.load_balancing_weight = _validation.check_non_negative_float(
            "load_balancing_weight", load_balancing_weight)
        self.second_expert_policy = _check_policy("second_expert_policy",
                                                  second_expert_policy)
        self.eval_second_expert_policy = _check_policy(
            "eval_second_expert_policy", eval_second_expert_policy)
        self.second_expert_threshold = _validation.check_positive_float(
            "second_expert_threshold", second_expert_threshold)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def check_num_experts(self, num_experts):
        if num_experts < 2:
            raise ValueError(
                "`num_experts` must be at least 2 for top-2 routing, "
                f"received num_experts={num_experts!r}.")

    def _check_num_tokens(self, num_tokens):
        if isinstance(num_tokens, int) and num_tokens % self.token_groups:
            raise ValueError(
                f"`token_groups`={self.token_groups} must divide the number "
                f"of tokens of GShardRouter's input, received {num_tokens} "
                "tokens.")

    def _keep_second(self, second_gate, policy):
        """Whether each token keeps its second expert: bool [N]."""
        if policy == "all":
            return ops.ones_like(second_gate, dtype="bool")
        if policy == "none":
            return ops.zeros_like(second_gate, dtype="bool")
        if policy == "threshold":
            return ops.greater(second_gate, self.second_expert_threshold)
        draw = _random.uniform(ops.shape(second_gate), 0.0, 1.0,
                               self.seed_generator)
        return ops.less(draw, second_gate / self.second_expert_threshold)

    def call(self, inputs, training=None):
        self._check_num_tokens(inputs.shape[0])
        x = ops.cast(inputs, "float32")
        logits = ops.matmul(x, self.kernel)  # [N, E]
        probabilities = ops.softmax(logits, axis=-1)
        top_probability, top_index = top_k_per_token(
            probabilities, 2)  # [N, 2]
        gates = top_probability / ops.sum(top_probability, axis=-1,
                                          keepdims=True)
        policy = (self.second_expert_policy if training
                  else self.eval_second_expert_policy)
        keep_second = self._keep_second(gates[:, 1], policy)  # [N]
        kept = ops.stack([ops.ones_like(keep_second), keep_second], axis=1)
        expert_indices = ops.cast(
            ops.where(kept, top_index, self.num_experts), "int32")
        expert_weights = ops.where(kept, gates, 0.0)

        # Skipped choices count with weight 0, under a valid segment id.
        kept_weight = ops.cast(kept, "float32")
        load = balancing.count_per_expert(top_index, self.num_experts,
                                          weights=kept_weight)
        importance = balancing.count_per_expert(
            top_index, self.num_experts, weights=expert_weights)

        auxiliary_losses = self.add_losses({
            "load_balancing_loss": self.load_balancing_weight
            * balancing.load_balancing_loss(top_index[:, 0], probabilities,
                                            self.token_groups),
        }, logits, training)
        return RoutingResult(expert_indices, expert_weights, importance, load,
                             auxiliary_losses)

    def compute_output_spec(self, inputs, training=None):
        self._check_num_tokens(inputs.shape[0])
        return super().compute_output_spec(inputs, training)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, GShardRouter)}
