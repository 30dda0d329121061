"""The base class of Mixture-of-Experts layers, and finding them in a model."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import dispatch
from sgmoe.layers._renaming_layer import RenamingLayer
from sgmoe.layers.feed_forward_experts import FeedForwardExperts
from sgmoe.layers.token_routing import TokenRouting

# Names a distribution's layout map uses to find a MoE layer's parts
# (`sgmoe.distribute.expert_layout_map` builds its rules from them): the
# experts sublayer, the placement of the grouped tokens of capacity
# dispatch ("<moe path>/token_groups"), of the expert buffer ("<experts
# path>/input") and of the experts' outputs ("<experts path>/output",
# which Keras itself looks up for every layer's output).
EXPERTS = "experts"
TOKEN_GROUPS = "token_groups"
EXPERT_INPUT = "input"
EXPERT_OUTPUT = "output"


@keras.saving.register_keras_serializable(package="sgmoe")
class MoELayer(RenamingLayer):
    """Base class of Mixture-of-Experts layers.

    It owns what every MoE layer has: the experts (one
    `FeedForwardExperts` of `num_experts` networks, the sublayer
    `experts`), the capacity arguments, the monitoring statistics, the
    placements a distribution may ask for, and the token flattening of
    the paper's "convolutional" batching (every leading dimension of the
    input is one macro-batch). A subclass decides which expert serves
    which token: it builds its gates in `build` (after `super().build`)
    and calls `add_statistics` with its loss names; in `call` it routes,
    runs the experts with `run_experts` and calls `record_statistics`;
    `route_flat` gives its inference routing per token (for `route`).

    Statistics of the last call, kept in non-trainable float32 variables
    for monitoring (the contract `sgmoe.training.MoETensorBoard` reads):
    `expert_importance` [E] and `expert_load` [E] (the router's, e.g. the
    smooth load estimator of noisy top-k gating in training),
    `expert_dispatched` [E] (assignments each expert computed),
    `expert_dropped` [E] (assignments to each expert dropped for lack of
    capacity), `dropped_fraction` (of all token-expert assignments) and
    `auxiliary_losses`, a dict holding one scalar per loss name, so a
    monitor can log any MoE layer without knowing its router. Training
    calls also add every statistic to a window's sums (`window_sums`,
    `window_steps`): `window_statistics()` gives their means since the
    last `reset_window()`, so a monitor can log a logging window's mean
    instead of one batch. Evaluation and prediction calls leave the
    window alone.

    Args:
        num_experts: E, the number of expert networks.
        expert_hidden_dim: hidden units h of each expert.
        capacity_factor: slots per expert relative to the mean load, in
            training (> 0); see the subclasses.
        eval_capacity_factor: a capacity factor outside training (> 0), or
            None (the default) for none: inference then keeps every
            assignment. Read when a call is traced, so it can be changed on
            a built or loaded model (re-trace a compiled predict function
            with `model.make_predict_function(force=True)`).
        min_capacity: the least number of slots per expert (GShard's
            minimum capacity).
        dropless: if true, no assignment is ever dropped, in training too
            (`dispatch.plan_dropless`); capacity arguments are then unused.
        output_activation: applied to the combined output.
        output_dim: d_out of each expert; defaults to the input dimension.
        expert_activation: hidden activation of the experts.
        use_bias: whether the experts have biases.
        kernel_initializer: expert kernel initializer; None means
            per-expert Glorot uniform (see `FeedForwardExperts`).
        rematerialize_experts: recompute the experts' hidden activations in
            the backward pass instead of storing them (paper, Appendix D).
        expert_dropout: dropout rate on the experts' hidden activations in
            training, in [0, 1).
        seed: seed of the layer's randomness (gating noise, expert dropout
            and initializers).
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        num_experts,
        expert_hidden_dim,
        capacity_factor=1.25,
        eval_capacity_factor=None,
        min_capacity=1,
        dropless=False,
        output_activation=None,
        output_dim=None,
        expert_activation="relu",
        use_bias=True,
        kernel_initializer=None,
        rematerialize_experts=False,
        expert_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_experts = _validation.check_positive_int("num_experts",
                                                          num_experts)
        self.expert_hidden_dim = _validation.check_positive_int(
            "expert_hidden_dim", expert_hidden_dim)
        self.capacity_factor = _validation.check_positive_float(
            "capacity_factor", capacity_factor)
        self.eval_capacity_factor = (
            None if eval_capacity_factor is None else
            _validation.check_positive_float("eval_capacity_factor",
                                             eval_capacity_factor))
        self.min_capacity = _validation.check_positive_int("min_capacity",
                                                           min_capacity)
        self.dropless = bool(dropless)
        self.output_activation = keras.activations.get(output_activation)
        self.output_dim = _validation.check_optional_positive_int(
            "output_dim", output_dim)
        self.expert_activation = keras.activations.get(expert_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.rematerialize_experts = bool(rematerialize_experts)
        self.expert_dropout = _validation.check_unit_interval(
            "expert_dropout", expert_dropout)
        self.seed = seed
        self.experts = self.make_experts(self.num_experts, EXPERTS)

    def make_experts(self, num_experts, name):
        """A `FeedForwardExperts` with this layer's expert arguments."""
        return FeedForwardExperts(
            num_experts=num_experts, hidden_dim=self.expert_hidden_dim,
            output_dim=self.output_dim, activation=self.expert_activation,
            use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
            rematerialize=self.rematerialize_experts,
            dropout=self.expert_dropout, seed=self.seed,
            dtype=self.dtype_policy, name=name)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                f"The last dimension of `inputs` to {type(self).__name__} "
                f"must be known, received shape {tuple(input_shape)}.")
        self.input_dim = input_shape[-1]
        self.experts.build((self.num_experts, None, self.input_dim))

    def call_capacity_factor(self, training):
        """The capacity factor of a call, or None for no capacity.

        Training uses `capacity_factor`; outside training
        `eval_capacity_factor`, whose default None keeps every assignment.
        `dropless` layers never use a capacity.
        """
        if self.dropless:
            return None
        return self.capacity_factor if training else self.eval_capacity_factor

    def flatten_tokens(self, inputs):
        """[..., d] -> ([N, d] tokens, the leading shape), checking d."""
        if inputs.shape[-1] != self.input_dim:
            raise ValueError(
                f"The last dimension of `inputs` must be {self.input_dim} "
                f"(the size {type(self).__name__} was built with), received "
                f"inputs of shape {tuple(inputs.shape)}.")
        return (ops.reshape(inputs, (-1, self.input_dim)),
                tuple(ops.shape(inputs)[:-1]))

    def route(self, inputs):
        """The experts each token goes to in inference, and their gates.

        The routing `call` uses with `training=False` (no gating noise),
        without running the experts: what the router chose, before any
        `eval_capacity_factor` drops.

        Args:
            inputs: float tensor [..., d].

        Returns:
            A `TokenRouting` of int32 / float32 tensors [..., m].
        """
        inputs = ops.convert_to_tensor(inputs)
        if not self.built:
            self.build(tuple(inputs.shape))
        tokens, leading_shape = self.flatten_tokens(inputs)
        indices, weights = self.route_flat(tokens)
        width = (indices.shape[-1],)
        return TokenRouting(ops.reshape(indices, leading_shape + width),
                            ops.reshape(weights, leading_shape + width))

    def route_flat(self, tokens):
        """(expert indices int32 [N, m], gate values float32 [N, m]) of
        tokens [N, d], as `TokenRouting` describes them; implemented by
        every subclass."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement route_flat.")

    def place(self, layer, name, tensor):
        """`tensor` placed by the active distribution's layout for
        "<layer path>/<name>", if its layout map has one; else unchanged.

        Layers only ask: `sgmoe.distribute` decides where things live.
        """
        distribution = keras.distribution.distribution()
        if distribution is None:
            return tensor
        layout = distribution.get_tensor_layout(f"{layer.path}/{name}")
        if layout is None:
            return tensor
        return keras.distribution.distribute_tensor(tensor, layout)

    def run_experts(self, tokens, plan, training, num_tokens=None,
                    placed=False):
        """Dispatch by `plan`, the experts, combine: [N, d] -> [N, d_out].

        A dropless plan's overflow rows go through
        `experts.call_with_overflow`. With `placed`, the grouped tensors
        and the expert buffer are placed as the distribution's layout map
        asks (`TOKEN_GROUPS`, `EXPERT_INPUT`).
        """
        place_groups = place_inputs = dispatch.unplaced
        if placed:
            def place_groups(tensor):
                return self.place(self, TOKEN_GROUPS, tensor)

            def place_inputs(tensor):
                return self.place(self.experts, EXPERT_INPUT, tensor)

        expert_inputs = place_inputs(dispatch.dispatch(tokens, plan,
                                                       place_groups))
        if plan.overflow is None:
            return dispatch.combine(
                self.experts(expert_inputs, training=training), plan,
                num_tokens, place_groups)
        expert_outputs, overflow_outputs = self.experts.call_with_overflow(
            expert_inputs, dispatch.dispatch_overflow(tokens, plan),
            training=training)
        return dispatch.combine(expert_outputs, plan, num_tokens,
                                place_groups, overflow_outputs)

    def add_statistics(self, loss_names):
        """Creates the monitoring variables (in `build`)."""

        def statistic(name, shape):
            return self.add_weight(name=name, shape=shape,
                                   initializer="zeros", dtype="float32",
                                   trainable=False)

        self.expert_importance = statistic("expert_importance",
                                           (self.num_experts,))
        self.expert_load = statistic("expert_load", (self.num_experts,))
        self.dropped_fraction = statistic("dropped_fraction", ())
        self.auxiliary_losses = {name: statistic(name, ())
                                 for name in sorted(loss_names)}
        # Created last, so that files saved before they existed still load
        # (`load_own_variables`, and `sgmoe.training.Checkpointer`).
        self.expert_dispatched = statistic("expert_dispatched",
                                           (self.num_experts,))
        self.expert_dropped = statistic("expert_dropped", (self.num_experts,))
        self.window_steps = statistic("window_steps", ())
        self.window_sums = {
            name: statistic(f"window_{name}", tuple(variable.shape))
            for name, variable in self.last_call_statistics().items()}
        self.statistics_added_later = (
            [self.expert_dispatched, self.expert_dropped, self.window_steps]
            + list(self.window_sums.values()))

    def last_call_statistics(self):
        """{name: variable} of the statistics of the last call."""
        statistics = {
            "expert_importance": self.expert_importance,
            "expert_load": self.expert_load,
            "expert_dispatched": self.expert_dispatched,
            "expert_dropped": self.expert_dropped,
            "dropped_fraction": self.dropped_fraction,
        }
        statistics.update(self.auxiliary_losses)
        return statistics

    def record_statistics(self, importance, load, dropped_fraction,
                          auxiliary_losses, plan, training):
        """Assigns the statistics of this call, and in training adds them
        to the window's sums (in `call`).

        `plan` is the `DispatchPlan` of the experts' buffer, whose
        `expert_dispatched` and `expert_dropped` are recorded.
        """
        values = {
            "expert_importance": importance,
            "expert_load": load,
            "expert_dispatched": plan.expert_dispatched,
            "expert_dropped": plan.expert_dropped,
            "dropped_fraction": dropped_fraction,
        }
        values.update(auxiliary_losses)
        for name, variable in self.last_call_statistics().items():
            variable.assign(ops.cast(values[name], "float32"))
        if training:
            self.window_steps.assign_add(1.0)
            for name, variable in self.window_sums.items():
                variable.assign_add(ops.cast(values[name], "float32"))

    def window_statistics(self):
        """The means of the statistics over the training calls since the
        last `reset_window`, as NumPy values by name (the names of
        `last_call_statistics`), with "steps", the number of calls; None
        if there was no training call."""
        steps = float(ops.convert_to_numpy(self.window_steps))
        if steps == 0:
            return None
        means = {name: ops.convert_to_numpy(variable) / steps
                 for name, variable in self.window_sums.items()}
        means["steps"] = steps
        return means

    def reset_window(self):
        """Starts a new window of statistics (zeros the sums)."""
        self.window_steps.assign(0.0)
        for variable in self.window_sums.values():
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def load_own_variables(self, store):
        # Files saved before `statistics_added_later` existed hold the
        # other variables, in the same order: load those.
        own = self._trainable_variables + self._non_trainable_variables
        later = getattr(self, "statistics_added_later", [])
        if later and len(store.keys()) == len(own) - len(later):
            later_ids = {id(variable) for variable in later}
            older = [v for v in own if id(v) not in later_ids]
            if [id(v) for v in own[:len(older)]] == [id(v) for v in older]:
                for index, variable in enumerate(older):
                    variable.assign(store[str(index)])
                return
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape):
        output_dim = self.output_dim or input_shape[-1]
        return tuple(input_shape[:-1]) + (output_dim,)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, MoELayer, exclude=("num_experts",))}


def batch_shards():
    """Shards of the batch axis of the active `keras.distribution`, or 1."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    batch_axis = getattr(distribution, "batch_dim_name", None)
    if batch_axis not in mesh.axis_names:
        return 1
    return mesh.shape[mesh.axis_names.index(batch_axis)]


def is_moe_layer(layer):
    """Whether `layer` is a Mixture-of-Experts layer (a `MoELayer`)."""
    return isinstance(layer, MoELayer)


def route_tokens(model, inputs, **call_arguments):
    """The inference routing of every MoE layer of a model, per token.

    Runs `model(inputs, training=False, **call_arguments)` eagerly once
    and records what each MoE layer's `route` gives for the input it
    receives in that call (for a layer called more than once, the last
    call).

    Args:
        model: a `keras.Model` or layer with MoE layers.
        inputs: the model's inputs.

    Returns:
        {name (as `find_moe_layers` names them): `TokenRouting`}, for the
        MoE layers the call reached.

    Example:

    >>> inputs = keras.Input((5, 16))
    >>> outputs = MixtureOfExperts(4, 8, k=2, name="moe")(inputs)
    >>> model = keras.Model(inputs, outputs)
    >>> routing = route_tokens(model, np.ones((3, 5, 16), "float32"))
    >>> tuple(routing["moe"].expert_indices.shape)
    (3, 5, 2)
    """
    layers = find_moe_layers(model)
    recorded = {}

    def recording(name, layer, call):
        def call_and_record(inputs, *args, **kwargs):
            recorded[name] = layer.route(inputs)
            return call(inputs, *args, **kwargs)
        return call_and_record

    for name, layer in layers.items():
        # An instance attribute, removed below, shadows the class's `call`.
        layer.call = recording(name, layer, layer.call)
    try:
        model(inputs, training=False, **call_arguments)
    finally:
        for layer in layers.values():
            del layer.call
    return {name: recorded[name] for name in layers if name in recorded}


def find_moe_layers(model):
    """The MoE layers of a model or layer, nested ones included, by name.

    Names are the layers' `path`s. A sub-model built on its own before it
    was nested gives its layers paths without the outer names, so paths can
    repeat; layers whose path is not unique are named by their chain of
    layer names from the model instead (e.g. "block/moe"), with a numeric
    suffix if even that repeats.

    Args:
        model: a `keras.Model` or layer (itself included if a MoE layer).

    Returns:
        A dict {name: layer}, outermost first, in the order the layers are
        tracked.

    Example:

    >>> inputs = keras.Input((5, 16))
    >>> outputs = MixtureOfExperts(4, 8, k=2, name="moe")(inputs)
    >>> list(find_moe_layers(keras.Model(inputs, outputs)))
    ['moe']
    """
    found = []  # (layer, chain of names)
    seen = {id(model)}

    def walk(layer, chain):
        # Keras 3 keeps a layer's directly tracked sublayers here; there is
        # no public accessor for layers that are not models.
        for sublayer in layer._flatten_layers(include_self=False,
                                              recursive=False):
            if id(sublayer) in seen:
                continue
            seen.add(id(sublayer))
            sub_chain = chain + (sublayer.name,)
            if is_moe_layer(sublayer):
                found.append((sublayer, sub_chain))
            walk(sublayer, sub_chain)

    if is_moe_layer(model):
        found.append((model, (model.name,)))
    walk(model, ())

    paths = [layer.path or layer.name for layer, _ in found]
    names = {}
    for (layer, chain), path in zip(found, paths):
        name = path if paths.count(path) == 1 else "/".join(chain)
        unique, suffix = name, 2
        while unique in names:
            unique, suffix = f"{name}_{suffix}", suffix + 1
        names[unique] = layer
    return names
