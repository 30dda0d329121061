"""The sparsely-gated Mixture-of-Experts layer (Shazeer et al. 2017)."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import dispatch
from sgmoe.layers import routers
from sgmoe.layers import token_routing
from sgmoe.layers.moe_layer import MoELayer
from sgmoe.layers.moe_layer import batch_shards
from sgmoe.layers.routers.routing_result import ExpertSlots

# Arguments of the noisy top-k router that MixtureOfExperts took itself
# before routers owned their arguments; `from_config` moves them.
LEGACY_ROUTER_ARGUMENTS = ("noisy", "importance_weight", "load_weight",
                            "noise_epsilon")


@keras.saving.register_keras_serializable(package="sgmoe")
class MixtureOfExperts(MoELayer):
    """Sparsely-gated Mixture-of-Experts: y = sum_i G(x)_i E_i(x).

    Shazeer et al. 2017, "Outrageously Large Neural Networks: The
    Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538.

    Four parts, one job each: a router (`NoisyTopKRouter` by default; any
    `sgmoe.layers.Router`) picks k experts and their gate values per token;
    a dispatcher gathers the tokens into an [experts, capacity, d] buffer;
    `FeedForwardExperts` runs every expert on its own slots; the combine
    gathers the outputs back and sums them with the gate values.

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

    Statistics of the last call are kept for monitoring (see `MoELayer`);
    `auxiliary_losses` holds one scalar per loss the router names (e.g.
    "importance_loss", "load_loss").

    The router owns its arguments: give it by name with `router_args`
    (`router="switch", router_args={"load_balancing_weight": 0.02}`) or as
    a configured `Router` (`router=GShardRouter(token_groups=4)`); the
    layer gives it `num_experts` and, for a named router, `seed`. The
    layer never ignores an argument: `k` with a router whose k is fixed
    (Switch: 1, GShard: 2, expert choice: none) is a ValueError naming
    both.

    Args:
        num_experts: number of experts E.
        expert_hidden_dim: hidden units h of each expert.
        k: experts per token, passed to a router that takes it
            ("noisy_top_k": 4 by default; "strictly_balanced": the average
            experts per token); None leaves the router's. With a router
            whose k is fixed it must be None or equal to it.
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
            means the router's `token_groups` if it has one above 1, else
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
        seed: seed of the experts' initializers and dropout, and of a
            router given by name.
        router: a router name of `sgmoe.layers.routers.ROUTERS`:
            "noisy_top_k" (the default, the paper's `NoisyTopKRouter`),
            "switch" (`SwitchRouter`), "gshard" (`GShardRouter`: top-2,
            random second expert in training), "expert_choice"
            (`ExpertChoiceRouter`) or "strictly_balanced"
            (`StrictlyBalancedRouter`); a `Router` (its `num_experts` may
            be left None); or a serialized router.
        router_args: constructor arguments of a router given by name (e.g.
            {"importance_weight": 0.1, "load_weight": 0.1, "noisy": True}
            for "noisy_top_k").
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
        k=None,
        token_groups=None,
        block_size=None,
        residual_expert=False,
        router="noisy_top_k",
        router_args=None,
        **kwargs,
    ):
        # The capacity, expert and base layer arguments (see MoELayer).
        super().__init__(num_experts, expert_hidden_dim, **kwargs)
        self.router = self._make_router(router, dict(router_args or {}), k)
        # The router checked its own k; None for routers that fill expert
        # slots themselves without a target k.
        self.k = self.router.k
        self.token_groups = _validation.check_optional_positive_int(
            "token_groups", token_groups)
        router_groups = getattr(self.router, "token_groups", 1)
        if token_groups is not None and router_groups not in (
                1, self.token_groups):
            raise ValueError(
                f"`token_groups`={token_groups} differs from the router's "
                f"token_groups={router_groups}; give one of them (or the "
                "same value to both).")
        if self.dropless and self.router.fills_expert_slots:
            raise ValueError(
                "`dropless` applies to routers where tokens choose experts; "
                f"{type(self.router).__name__} fills expert slots itself, so "
                "nothing is dropped by capacity. Use dropless=False.")
        self.block_size = _validation.check_optional_positive_int(
            "block_size", block_size)
        self.residual_expert = bool(residual_expert)
        # Residual-MoE: one more network, applied to every token.
        self.dense_expert = (self.make_experts(1, "dense_expert")
                             if self.residual_expert else None)

    def _make_router(self, router, router_args, k):
        """The router layer, with E; ValueError on any conflict with k."""
        if router is None:
            router = "noisy_top_k"
        if isinstance(router, str) and router in routers.ROUTERS:
            router_class = routers.ROUTERS[router]
            if k is not None and routers.takes_k(router_class):
                if router_args.get("k", k) != k:
                    raise ValueError(
                        f"`k`={k} differs from router_args['k']="
                        f"{router_args['k']}; give one of them.")
                router_args["k"] = k
            router_args.setdefault("seed", self.seed)
            router_args.setdefault("dtype", self.dtype_policy)
            router_args.setdefault("name", "router")
        router = routers.get(router, **router_args)
        router.set_num_experts(self.num_experts)
        if k is not None and router.k != k:
            fixed = (f"routes each token to {router.k} expert(s)"
                     if router.k is not None else
                     "has no k: experts choose their tokens")
            raise ValueError(
                f"`k`={k} conflicts with router={type(router).__name__}, "
                f"which {fixed}; leave k=None, or choose a router that "
                "takes k.")
        return router

    def build(self, input_shape):
        super().build(input_shape)
        if not self.router.built:
            self.router.build((None, self.input_dim))
        if self.dense_expert is not None:
            self.dense_expert.build((1, None, self.input_dim))
        routing_spec = self.router.compute_output_spec(
            keras.KerasTensor((None, self.input_dim)))
        self.add_statistics(routing_spec.auxiliary_losses)

    def call(self, inputs, training=None):
        tokens, leading_shape = self.flatten_tokens(inputs)
        num_tokens = ops.shape(tokens)[0]
        routing = self.router(tokens, training=training)
        plan = dispatch.plan_routing(
            routing, num_tokens, self.num_experts,
            capacity_factor=self.call_capacity_factor(training),
            min_capacity=self.min_capacity,
            num_groups=self._token_groups(num_tokens),
            block_size=self.block_size)
        # Placements a distribution's layout map may ask for (the paper's
        # layout: see sgmoe.distribute.expert_layout_map).
        outputs = self.run_experts(tokens, plan, training, num_tokens,
                                   placed=True)
        if self.dense_expert is not None:
            outputs = outputs + self.dense_expert(
                ops.expand_dims(tokens, 0), training=training)[0]
        outputs = self.output_activation(outputs)
        self.record_statistics(routing.importance, routing.load,
                               plan.dropped_fraction,
                               routing.auxiliary_losses, plan, training)
        return ops.reshape(outputs, leading_shape + (outputs.shape[-1],))

    def route_flat(self, tokens):
        routing = self.router(tokens, training=False)
        if isinstance(routing, ExpertSlots):
            return token_routing.from_expert_slots(
                routing.slot_token, routing.slot_weight,
                ops.shape(tokens)[0], self.num_experts)
        return token_routing.from_top_k(routing.expert_indices,
                                        routing.expert_weights,
                                        self.num_experts)

    def _token_groups(self, num_tokens):
        """G of this call: set, the router's, or the batch shards."""
        router_groups = getattr(self.router, "token_groups", 1)
        if self.token_groups is not None or router_groups > 1:
            return self.token_groups or router_groups
        groups = batch_shards()
        if not isinstance(num_tokens, int) or num_tokens % groups:
            return 1
        return groups

    def get_config(self):
        # `k` and `router_args` are saved inside the router's config.
        config = {**super().get_config(),
                  **constructor_config(self, MixtureOfExperts,
                                       exclude=("k", "router_args"))}
        # The layer builds its router; a saved input shape would only
        # differ in type (tuple or list) after a round trip.
        config["router"].pop("build_config", None)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Configs saved before routers owned their arguments: the noisy
        # top-k arguments go to that router; other routers ignored them.
        legacy = {name: config.pop(name) for name in LEGACY_ROUTER_ARGUMENTS
                  if name in config}
        if config.get("router") in (None, "noisy_top_k") and legacy:
            config["router_args"] = legacy
        return super().from_config(config)
