"""A batch of independent feed-forward experts stored as stacked weights."""

import functools

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers._expert_matmul import expert_matmul
from sgmoe.layers._grouped_matmul import grouped_feed_forward
from sgmoe.layers._grouped_matmul import grouped_matmul

# The stacked weights, [E, ...] each: a distribution's layout map splits
# them along the expert axis (`sgmoe.distribute.expert_layout_map`).
KERNEL_NAMES = ("kernel_in", "kernel_out")
BIAS_NAMES = ("bias_in", "bias_out")


@keras.saving.register_keras_serializable(package="sgmoe")
class FeedForwardExperts(keras.layers.Layer):
    """E feed-forward networks with one hidden layer, applied slot-wise.

    Expert e maps x to activation(x W_in[e] + b_in[e]) W_out[e] + b_out[e]
    (Shazeer et al. 2017, §3: "feed-forward networks with one ReLU-activated
    hidden layer"). The weights are stacked, `kernel_in` [E, d, h] and
    `kernel_out` [E, h, d_out], so all experts run as two batched matmuls over
    an [E, C, d] dispatch buffer.

    Default initialisation is Glorot-uniform *per expert* (fan-in d and fan-out
    h of one expert's matrix). Keras's own "glorot_uniform" would count the
    expert axis into both fans and initialise E times too small.

    With at most 64 slots per expert the matmuls' gradients are computed
    feature-major (`_expert_matmul.expert_matmul`), a layout XLA's CPU
    backend runs faster at small capacities (`bench/expert_matmul.py`);
    values and gradients are those of `ops.matmul`.

    Args:
        num_experts: E.
        hidden_dim: h, hidden units of each expert.
        output_dim: d_out; defaults to the input dimension.
        activation: hidden activation, default "relu".
        use_bias: whether the two layers have biases.
        kernel_initializer: initializer of both kernels; default (None) is
            per-expert Glorot uniform. A Keras initializer given here sees the
            full [E, d, h] shape.
        bias_initializer: initializer of both biases.
        rematerialize: if true, the hidden activations [E, C, h] are not kept
            for the backward pass but recomputed from the inputs (the paper,
            Appendix D, did this to save memory), trading one more forward
            matmul for memory; `keras.remat` (jax.checkpoint /
            tf.recompute_grad).
        dropout: rate of dropout on the hidden activations in training, in
            [0, 1) (a dropout inside the experts, apart from the model's;
            useful when fine-tuning large expert layers). Not with
            `rematerialize`: the recomputed pass would need the same mask.
        seed: seed of the dropout.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: [E, C, d] dispatch buffer.

    Returns:
        [E, C, d_out]. `call_with_overflow` also computes the overflow rows
        of dropless dispatch.

    Example:

    >>> experts = FeedForwardExperts(num_experts=4, hidden_dim=32)
    >>> tuple(experts(ops.ones((4, 3, 16))).shape)
    (4, 3, 16)
    """

    def __init__(
        self,
        num_experts,
        hidden_dim,
        output_dim=None,
        activation="relu",
        use_bias=True,
        kernel_initializer=None,
        bias_initializer="zeros",
        rematerialize=False,
        dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_experts = _validation.check_positive_int(
            "num_experts", num_experts)
        self.hidden_dim = _validation.check_positive_int(
            "hidden_dim", hidden_dim)
        self.output_dim = _validation.check_optional_positive_int(
            "output_dim", output_dim)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.rematerialize = bool(rematerialize)
        self.dropout = _validation.check_unit_interval("dropout", dropout)
        if self.dropout and self.rematerialize:
            raise ValueError(
                "`dropout` inside the experts cannot be combined with "
                f"`rematerialize`=True, received dropout={dropout}.")
        self.seed = seed
        self.seed_generator = (keras.random.SeedGenerator(seed)
                               if self.dropout else None)

    def _kernel_initializer(self):
        if self.kernel_initializer is not None:
            return self.kernel_initializer
        # VarianceScaling computes fans over prod(shape[:-2]) * shape[-2:], so
        # scale by E to get Glorot for one [d, h] matrix.
        return keras.initializers.VarianceScaling(
            scale=float(self.num_experts), mode="fan_avg",
            distribution="uniform")

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "`inputs` of FeedForwardExperts must have shape [experts, "
                f"capacity, d] with a known d, received {tuple(input_shape)}.")
        if input_shape[0] not in (None, self.num_experts):
            raise ValueError(
                f"`inputs` has {input_shape[0]} experts on axis 0 but "
                f"num_experts={self.num_experts}.")
        input_dim = input_shape[-1]
        output_dim = self.output_dim or input_dim
        initializer = self._kernel_initializer()
        self.kernel_in = self.add_weight(
            name=KERNEL_NAMES[0],
            shape=(self.num_experts, input_dim, self.hidden_dim),
            initializer=initializer)
        self.kernel_out = self.add_weight(
            name=KERNEL_NAMES[1],
            shape=(self.num_experts, self.hidden_dim, output_dim),
            initializer=initializer)
        if self.use_bias:
            self.bias_in = self.add_weight(
                name=BIAS_NAMES[0], shape=(self.num_experts, self.hidden_dim),
                initializer=self.bias_initializer)
            self.bias_out = self.add_weight(
                name=BIAS_NAMES[1], shape=(self.num_experts, output_dim),
                initializer=self.bias_initializer)

    def call(self, inputs, training=None):
        return self._run(self._forward, inputs, training)

    def call_with_overflow(self, inputs, overflow, training=None):
        """The buffer and the overflow rows of dropless dispatch.

        Args:
            inputs: [E, C, d] dispatch buffer.
            overflow: (rows [R, d], row_expert int [R], blocks), as
                `dispatch.dispatch_overflow` gives them: rows sorted by
                expert, `blocks` (`_grouped_matmul.Blocks`) cutting them
                into blocks of one expert each. Each block runs its own
                expert's network, reading the weights in place
                (`_grouped_matmul.grouped_feed_forward`; with dropout in
                training, two `grouped_matmul`s).
            training: whether dropout applies.

        Returns:
            ([E, C, d_out], [R, d_out]); rows in no block have unspecified
            values.
        """
        rows, row_expert, blocks = overflow
        if training and self.dropout:
            # Dropout masks would be [R, h]: the unfused path makes them.
            forward = functools.partial(
                self._grouped_forward, rows=rows, row_expert=row_expert,
                blocks=blocks)
            return self._run(forward, inputs, training)
        weights = self._cast_weights()
        if not self.use_bias:
            weights += [ops.zeros((w.shape[0], w.shape[2]), w.dtype)
                        for w in weights]
        return grouped_feed_forward(inputs, rows, weights, blocks,
                                    self.activation,
                                    rematerialize=self.rematerialize)

    def _cast_weights(self):
        weights = [self.kernel_in, self.kernel_out]
        if self.use_bias:
            weights += [self.bias_in, self.bias_out]
        return [ops.cast(w, self.compute_dtype) for w in weights]

    def _run(self, forward, inputs, training):
        weights = self._cast_weights()
        if self.rematerialize:
            return keras.remat(forward)(inputs, *weights)
        return forward(inputs, *weights, training=training)

    def _hidden(self, hidden, training):
        hidden = self.activation(hidden)
        if training and self.dropout:
            hidden = keras.random.dropout(hidden, self.dropout,
                                          seed=self.seed_generator)
        return hidden

    def _forward(self, inputs, kernel_in, kernel_out, bias_in=None,
                 bias_out=None, training=None):
        hidden = expert_matmul(inputs, kernel_in)  # [E, C, h]
        if bias_in is not None:
            hidden = hidden + ops.expand_dims(bias_in, 1)
        hidden = self._hidden(hidden, training)
        outputs = expert_matmul(hidden, kernel_out)  # [E, C, d_out]
        if bias_out is not None:
            outputs = outputs + ops.expand_dims(bias_out, 1)
        return outputs

    def _grouped_forward(self, inputs, kernel_in, kernel_out, bias_in=None,
                         bias_out=None, training=None, *, rows, row_expert,
                         blocks):
        hidden, row_hidden = grouped_matmul(inputs, rows, kernel_in, blocks)
        if bias_in is not None:
            hidden = hidden + ops.expand_dims(bias_in, 1)
            row_hidden = row_hidden + ops.take(bias_in, row_expert, axis=0)
        hidden = self._hidden(hidden, training)
        row_hidden = self._hidden(row_hidden, training)
        outputs, row_outputs = grouped_matmul(hidden, row_hidden, kernel_out,
                                              blocks)
        if bias_out is not None:
            outputs = outputs + ops.expand_dims(bias_out, 1)
            row_outputs = row_outputs + ops.take(bias_out, row_expert, axis=0)
        return outputs, row_outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, FeedForwardExperts)}
