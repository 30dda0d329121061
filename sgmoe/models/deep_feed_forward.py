"""A dense feed-forward network with one or more hidden layers."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config


@keras.saving.register_keras_serializable(package="sgmoe")
class DeepFeedForward(keras.layers.Layer):
    """x -> act(... act(x W_1 + b_1) ...) W_out + b_out, then output_activation.

    The computationally matched baselines of Shazeer et al. 2017 (Appendix
    C.1) replace the MoE layer with a "MoE" of a single expert: MoE-1-Wide's
    expert has one ReLU hidden layer of 4096 units, MoE-1-Deep's has four of
    1024. A gate over one expert always gives it weight 1 (the softmax of one
    value), and one expert cannot be unbalanced, so such a MoE layer computes
    exactly this network; `FeedForwardExperts` has one hidden layer, hence
    this class for the deep expert.

    Args:
        hidden_dim: units of each hidden layer.
        num_hidden_layers: number of hidden layers (>= 1).
        output_dim: output units; defaults to the input dimension.
        activation: hidden activation (default "relu").
        output_activation: applied to the output ("sigmoid" in the paper's
            language model, as for the MoE layer it replaces).
        use_bias: whether every layer has a bias.
        kernel_initializer: initializer of every kernel.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: [..., d].

    Returns:
        [..., output_dim].

    Example:

    >>> network = DeepFeedForward(hidden_dim=32, num_hidden_layers=4)
    >>> tuple(network(ops.ones((2, 5, 16))).shape)
    (2, 5, 16)
    """

    def __init__(self, hidden_dim, num_hidden_layers=1, output_dim=None,
                 activation="relu", output_activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = _validation.check_positive_int("hidden_dim",
                                                         hidden_dim)
        self.num_hidden_layers = _validation.check_positive_int(
            "num_hidden_layers", num_hidden_layers)
        self.output_dim = _validation.check_optional_positive_int(
            "output_dim", output_dim)
        self.activation = keras.activations.get(activation)
        self.output_activation = keras.activations.get(output_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last dimension of `inputs` to DeepFeedForward must be "
                f"known, received shape {tuple(input_shape)}.")
        sizes = ([input_dim] + [self.hidden_dim] * self.num_hidden_layers
                 + [self.output_dim or input_dim])
        self.kernels, self.biases = [], []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.kernels.append(self.add_weight(
                name=f"kernel_{i}", shape=(fan_in, fan_out),
                initializer=self.kernel_initializer))
            if self.use_bias:
                self.biases.append(self.add_weight(
                    name=f"bias_{i}", shape=(fan_out,), initializer="zeros"))

    def call(self, inputs):
        x = inputs
        last = len(self.kernels) - 1
        for i, kernel in enumerate(self.kernels):
            x = ops.matmul(x, ops.cast(kernel, self.compute_dtype))
            if self.use_bias:
                x = x + ops.cast(self.biases[i], self.compute_dtype)
            x = self.activation(x) if i < last else self.output_activation(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, DeepFeedForward)}
