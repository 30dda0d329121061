"""The sparsely-gated Mixture-of-Experts layer (Shazeer et al. 2017)."""

import functools

import keras
from keras import ops

from sgmoe import _validation
from sgmoe.layers import _moe_common
from sgmoe.layers import dispatch
from sgmoe.layers.expert_choice_router import ExpertChoiceRouter
from sgmoe.layers.gshard_router import GShardRouter
from sgmoe.layers.noisy_top_k_gating import NoisyTopKGating
from sgmoe.layers.routing_result import ExpertSlots
from sgmoe.layers.strictly_balanced_gating import StrictlyBalancedGating
from sgmoe.layers.switch_router import SwitchRouter

# Routers by name, built with their defaults and the layer's seed
# ("strictly_balanced" also takes the layer's k).
_NAMED_ROUTERS = {
    "expert_choice": ExpertChoiceRouter,
    "gshard": GShardRouter,
    "strictly_balanced": StrictlyBalancedGating,
    "switch": SwitchRouter,
}
ROUTER_NAMES = ("noisy_top_k",) + tuple(_NAMED_ROUTERS)


@keras.saving.register_keras_serializable(package="sgmoe")
class MixtureOfExperts(keras.layers.Layer):
    """Sparsely-gated Mixture-of-Experts: y = sum_i G(x)_i E_i(x).

    Shazeer et al. 2017, "Outrageously Large Neural Networks: The
    Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538.

    Four parts, one job each: a router (`NoisyTopKGating`) picks k experts and
    their gate values per token; a dispatcher gathers the tokens into an
    [experts, capacity, d] buffer; `FeedForwardExperts` runs every expert on
    its own slots; the combine gathers the outputs back and sums them with the
    gate values.

    The input may have any rank [..., d]. All leading dimensions are flattened
    into one macro-batch, so a MoE between LSTM layers sees every timestep of
    the batch at once (the paper's "convolutional" batching, §3.1), and the
    output has the input's shape with d_out last.

    Dispatch is sparse with static shapes: data movement is O(tokens * k * d)
    and expert FLOPs O(tokens * k * d * h), whatever the number of experts.

    Capacity (GShard, Switch Transformer) is a training-time device. In
    training each expert takes at most `ceil(capacity_factor * tokens * k /
    num_experts)` tokens per call; the least preferred assignments beyond
    that are dropped (a token's first choices are served before anyone's
    second choices). A dropped assignment contributes nothing, the token's
    other experts still count, and a token with all its assignments dropped
    gets a zero output, which a residual connection around the layer carries
    past it. Outside training nothing is dropped by default, as in the
    paper's layer, which has no capacity limit: the assignments that do not
    fit an expert's buffer overflow into rows computed block by block with
    that expert's weights (`dispatch.plan_dropless`), so every token gets
    all its k experts whatever the routing skew, and a model evaluates,
    predicts and decodes independently of how the other tokens of the batch
    route. `eval_capacity_factor` asks for a capacity at inference instead
    (GShard/Switch style): a fixed cost per call, paid for with dropped
    assignments wherever the routing is uneven, which the clean (noise-free)
    gate of a model trained with noise often is. `dropless=True` drops
    nothing in training either (MegaBlocks, Gale et al. 2022).

    Statistics of the last call are kept in non-trainable variables, for
    monitoring: `expert_importance` [E], `expert_load` [E],
    `dropped_fraction` (the fraction of token-expert assignments dropped),
    and `auxiliary_losses`, a dict holding one scalar per loss the router
    names (e.g. "importance_loss", "load_loss"), so a monitor can log any
    router without knowing which it is.

    Args:
        num_experts: number of experts E.
        expert_hidden_dim: hidden units h of each expert.
        k: experts per token.
        capacity_factor: slots per expert relative to the mean load
            tokens * k / E (> 0), in training, for routers where tokens
            choose experts (routers that fill expert slots themselves, like
            `ExpertChoiceRouter`, have their own capacity). With a router
            that splits tokens into groups (`GShardRouter`), capacity
            applies per group: ceil(capacity_factor * tokens_per_group * k
            / E).
        eval_capacity_factor: a capacity factor outside training (> 0), or
            None (the default) for none: inference then keeps every
            assignment (see above). It is read when a call is traced, so it
            can be changed on a built or loaded model without rebuilding it;
            a compiled predict function must be re-traced to see a new value
            (`model.make_predict_function(force=True)`).
        min_capacity: the least number of slots per expert (and group),
            whatever the capacity factor gives (GShard's minimum capacity).
        token_groups: G, the number of contiguous groups the macro-batch is
            split into for capacity-based dispatch (GShard's groups): each
            expert takes at most ceil(capacity_factor * N / G * k / E)
            tokens from each group, and tokens are gathered to and from
            the experts within their group. Routing, importance, load and
            the losses still see the whole macro-batch. None (the default)
            means the router's `num_groups` if it has one above 1, else
            the number of shards of the batch axis of the active
            `keras.distribution` (1 without one, or when it does not divide
            the tokens of a call): under `sgmoe.distribute.model_parallel`
            each device then dispatches its own share of the batch, its
            tokens never leave it on the way to the experts, and its expert
            FLOPs are its share's (see `sgmoe.distribute`); the experts'
            gradients are then summed over "batch", as for any replicated
            weight. An int fixes G, e.g. to reproduce a mesh run on one
            device, or 1 under a mesh to have every "batch" row compute
            every token for its experts instead (more FLOPs and token
            traffic, no expert-gradient sync); it must divide the tokens of
            every call. Not used by dropless dispatch (inference without
            an `eval_capacity_factor`, or `dropless`), which routes the
            whole macro-batch as one group, or by routers that fill expert
            slots themselves.
        dropless: if true, no assignment is ever dropped, in training too:
            each expert's first assignments fill an [E, C, d] buffer (C
            about the mean load plus two standard deviations of a balanced
            router, `dispatch.dropless_capacity`) and the rest are computed
            in blocks of one expert each; capacity arguments are then not
            used. Only for routers where tokens choose experts.
        block_size: most rows per overflow block of dropless dispatch, or
            None (the default) for the buffer's capacity per expert.
        output_activation: applied to the combined output; "sigmoid"
            reproduces the paper's language model.
        output_dim: d_out of each expert; defaults to the input dimension.
        expert_activation: hidden activation of the experts (default "relu").
        use_bias: whether the experts have biases.
        kernel_initializer: expert kernel initializer; None means per-expert
            Glorot uniform (see `FeedForwardExperts`).
        rematerialize_experts: recompute the experts' hidden activations in
            the backward pass instead of storing them (paper, Appendix D).
        expert_dropout: dropout rate on the experts' hidden activations in
            training, in [0, 1): a dropout inside the experts, apart from
            the model's (not with `rematerialize_experts`).
        residual_expert: if true, a Residual-MoE (Rajbhandari et al. 2022,
            DeepSpeed-MoE, §4.1): one more feed-forward network of the same
            shape that every token goes through, its output added to the
            routed experts' combined output (before `output_activation`);
            the routed experts then learn a correction to a dense layer.
        noisy: whether the gate adds trainable noise in training.
        importance_weight: w_importance of the importance loss.
        load_weight: w_load of the load loss.
        noise_epsilon: floor added to the noise scale (see `NoisyTopKGating`).
        seed: seed of the gating noise.
        router: a name, "noisy_top_k" (the default, the paper's
            `NoisyTopKGating` built from the arguments above), "switch"
            (`SwitchRouter`), "gshard" (`GShardRouter`: top-2, random
            second expert in training), "expert_choice"
            (`ExpertChoiceRouter`) or "strictly_balanced"
            (`StrictlyBalancedGating` with `k`), each with its defaults and
            seeded with `seed`; or a router layer (e.g. a configured
            `GShardRouter(num_experts, num_groups=4)`): any layer with
            `num_experts` and `k` attributes whose call on [N, d] tokens
            returns a `RoutingResult` (tokens choose experts; the router may
            set a `num_groups` attribute for group-local capacity) or an
            `ExpertSlots` (the router fills expert slots itself; k is then
            None). A router other than "noisy_top_k" brings its own k and
            losses; `noisy`, `importance_weight`, `load_weight` and
            `noise_epsilon` are then not used.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor [..., d].
        training: whether to add gating noise and the balancing losses.

    Returns:
        [..., d_out].

    Example:

    >>> inputs = keras.Input((5, 16))
    >>> outputs = MixtureOfExperts(num_experts=4, expert_hidden_dim=32, k=2)(
    ...     inputs)
    >>> tuple(outputs.shape)
    (None, 5, 16)
    """

    def __init__(
        self,
        num_experts,
        expert_hidden_dim,
        k=4,
        capacity_factor=1.25,
        eval_capacity_factor=None,
        min_capacity=1,
        token_groups=None,
        dropless=False,
        block_size=None,
        output_activation=None,
        output_dim=None,
        expert_activation="relu",
        use_bias=True,
        kernel_initializer=None,
        rematerialize_experts=False,
        expert_dropout=0.0,
        residual_expert=False,
        noisy=True,
        importance_weight=0.1,
        load_weight=0.1,
        noise_epsilon=1e-2,
        seed=None,
        router="noisy_top_k",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_experts = _validation.check_positive_int(
            "num_experts", num_experts)
        if router is None:
            router = "noisy_top_k"
        self.router_name = router if isinstance(router, str) else None
        if isinstance(router, str):
            router = self._named_router(router, k, seed)
        elif isinstance(router, dict):
            router = keras.saving.deserialize_keras_object(router)
        if router is not None:
            if not (isinstance(router, keras.layers.Layer)
                    and hasattr(router, "k")
                    and getattr(router, "num_experts", None) == num_experts):
                raise ValueError(
                    "`router` must be None or a router layer with "
                    f"num_experts={num_experts} and a `k` attribute, received "
                    f"{router!r}.")
            # The router checked its own k; None for routers that fill
            # expert slots themselves.
            self.k = router.k
        else:
            self.k = _validation.check_top_k(k, self.num_experts)
        _moe_common.set_expert_arguments(
            self, expert_hidden_dim, capacity_factor, eval_capacity_factor,
            min_capacity, output_activation, output_dim, expert_activation,
            use_bias, kernel_initializer, rematerialize_experts,
            expert_dropout)
        self.token_groups = (None if token_groups is None else
                             _validation.check_positive_int("token_groups",
                                                            token_groups))
        router_groups = getattr(router, "num_groups", 1)
        if token_groups is not None and router_groups not in (
                1, self.token_groups):
            raise ValueError(
                f"`token_groups`={token_groups} differs from the router's "
                f"num_groups={router_groups}; give one of them (or the "
                "same value to both).")
        self.dropless = bool(dropless)
        self.block_size = (None if block_size is None else
                           _validation.check_positive_int("block_size",
                                                          block_size))
        self.residual_expert = bool(residual_expert)
        self.noisy = bool(noisy)
        self.importance_weight = importance_weight
        self.load_weight = load_weight
        self.noise_epsilon = noise_epsilon
        self.seed = seed

        self.router = router if router is not None else NoisyTopKGating(
            num_experts=self.num_experts, k=self.k, noisy=noisy,
            importance_weight=importance_weight, load_weight=load_weight,
            noise_epsilon=noise_epsilon, seed=seed, dtype=self.dtype_policy,
            name="router")
        self.experts = _moe_common.feed_forward_experts(
            self, self.num_experts, "experts")
        # Residual-MoE: one more network, applied to every token.
        self.dense_expert = (
            _moe_common.feed_forward_experts(self, 1, "dense_expert")
            if self.residual_expert else None)

    def _named_router(self, name, k, seed):
        """The router layer for a name; None for the built-in noisy top-k."""
        if name not in ROUTER_NAMES:
            raise ValueError(
                f"`router` must be one of {sorted(ROUTER_NAMES)} or a router "
                f"layer, received router={name!r}.")
        if name == "noisy_top_k":
            return None
        arguments = {"seed": seed, "dtype": self.dtype_policy,
                     "name": "router"}
        if name == "strictly_balanced":
            arguments["k"] = k
        return _NAMED_ROUTERS[name](self.num_experts, **arguments)

    def build(self, input_shape):
        self.input_dim = _moe_common.input_dim(self, input_shape)
        if not self.router.built:
            self.router.build((None, self.input_dim))
        self.experts.build((self.num_experts, None, self.input_dim))
        if self.dense_expert is not None:
            self.dense_expert.build((1, None, self.input_dim))
        routing_spec = self.router.compute_output_spec(
            keras.KerasTensor((None, self.input_dim)))
        if self.dropless and isinstance(routing_spec, ExpertSlots):
            raise ValueError(
                "`dropless` applies to routers where tokens choose experts; "
                f"{type(self.router).__name__} fills expert slots itself, so "
                "nothing is dropped by capacity. Use dropless=False.")
        _moe_common.add_statistics(self, self.num_experts,
                                   routing_spec.auxiliary_losses)

    def call(self, inputs, training=None):
        tokens, leading_shape = _moe_common.flatten_tokens(self, inputs)
        num_tokens = ops.shape(tokens)[0]
        routing = self.router(tokens, training=training)
        plan = dispatch.plan_routing(
            routing, num_tokens, self.num_experts,
            capacity_factor=_moe_common.capacity_factor(self, training),
            min_capacity=self.min_capacity,
            num_groups=self._token_groups(num_tokens),
            block_size=self.block_size)
        # Placements a distribution's layout map may ask for (the paper's
        # layout: see sgmoe.distribute.expert_layout_map).
        place_groups = functools.partial(_moe_common.distribute_tensor, self,
                                         "token_groups")
        outputs = _moe_common.run_experts(
            self.experts, tokens, plan, training, num_tokens, place_groups,
            place_inputs=functools.partial(_moe_common.distribute_tensor,
                                           self.experts, "input"))
        if self.dense_expert is not None:
            outputs = outputs + self.dense_expert(
                ops.expand_dims(tokens, 0), training=training)[0]
        outputs = self.output_activation(outputs)
        _moe_common.record_statistics(self, routing.importance, routing.load,
                                      plan.dropped_fraction,
                                      routing.auxiliary_losses)
        return ops.reshape(outputs, leading_shape + (outputs.shape[-1],))

    def _token_groups(self, num_tokens):
        """G of this call: set, the router's, or the batch shards."""
        router_groups = getattr(self.router, "num_groups", 1)
        if self.token_groups is not None or router_groups > 1:
            return self.token_groups or router_groups
        groups = _moe_common.batch_shards()
        if not isinstance(num_tokens, int) or num_tokens % groups:
            return 1
        return groups

    def compute_output_shape(self, input_shape):
        output_dim = self.output_dim or input_shape[-1]
        return tuple(input_shape[:-1]) + (output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_experts": self.num_experts,
            "k": self.k,
            **_moe_common.expert_config(self),
            "token_groups": self.token_groups,
            "dropless": self.dropless,
            "block_size": self.block_size,
            "residual_expert": self.residual_expert,
            "noisy": self.noisy,
            "importance_weight": self.importance_weight,
            "load_weight": self.load_weight,
            "noise_epsilon": self.noise_epsilon,
            "seed": self.seed,
            "router": (self.router_name if self.router_name is not None else
                       keras.saving.serialize_keras_object(self.router)),
        })
        return config
