"""An LSTM cell with a recurrent projection layer (LSTMP, Sak et al. 2014)."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config


@keras.saving.register_keras_serializable(package="sgmoe")
class ProjectedLSTMCell(keras.layers.Layer):
    """LSTM cell whose output is projected to fewer units (LSTMP).

    Sak, Senior and Beaufays 2014, "Long Short-Term Memory Based Recurrent
    Neural Network Architectures for Large Vocabulary Speech Recognition":
    the cell has `units` memory cells, and its output m_t = (o_t * tanh(c_t))
    P is projected to `projection_units`. The projected output is both the
    cell's output and what the next timestep's gates see, so the recurrent
    kernel is [projection_units, 4 * units] instead of [units, 4 * units].
    Shazeer et al. 2017 use it for the LSTM-2048-512 baseline (2048 cells,
    projection to 512) and MoE-143M (4096 cells, projection to 1024).

    Keras has no projected LSTM; wrap this cell in `keras.layers.RNN`. Gates
    are ordered (input, forget, cell, output), as in `keras.layers.LSTM`,
    and the forget-gate bias starts at 1.

    Parameters: input_dim * 4u + p * 4u + 4u (biases) + u * p.

    Args:
        units: u, memory cells.
        projection_units: p, size of the projected output.
        kernel_initializer: initializer of the input kernel and projection.
        recurrent_initializer: initializer of the recurrent kernel.
        unit_forget_bias: whether the forget-gate bias starts at 1.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: [batch, input_dim], one timestep.
        states: [m_{t-1} [batch, p], c_{t-1} [batch, u]].

    Returns:
        (m_t [batch, p], [m_t, c_t]).

    Example:

    >>> lstm = keras.layers.RNN(ProjectedLSTMCell(64, 16),
    ...                         return_sequences=True)
    >>> tuple(lstm(ops.ones((2, 5, 16))).shape)
    (2, 5, 16)
    """

    def __init__(self, units, projection_units,
                 kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", unit_forget_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = _validation.check_positive_int("units", units)
        self.projection_units = _validation.check_positive_int(
            "projection_units", projection_units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(
            recurrent_initializer)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.state_size = [self.projection_units, self.units]
        self.output_size = self.projection_units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        units, projection = self.units, self.projection_units
        self.kernel = self.add_weight(
            name="kernel", shape=(input_dim, 4 * units),
            initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(projection, 4 * units),
            initializer=self.recurrent_initializer)
        self.bias = self.add_weight(
            name="bias", shape=(4 * units,), initializer=self._bias_initializer)
        self.projection_kernel = self.add_weight(
            name="projection_kernel", shape=(units, projection),
            initializer=self.kernel_initializer)

    def _bias_initializer(self, shape, dtype=None):
        if not self.unit_forget_bias:
            return ops.zeros(shape, dtype=dtype)
        units = self.units
        return ops.concatenate([
            ops.zeros((units,), dtype=dtype), ops.ones((units,), dtype=dtype),
            ops.zeros((2 * units,), dtype=dtype)])

    def call(self, inputs, states, training=None):
        projected, cell = states
        gates = (ops.matmul(inputs, self.kernel)
                 + ops.matmul(projected, self.recurrent_kernel) + self.bias)
        input_gate, forget_gate, candidate, output_gate = ops.split(
            gates, 4, axis=-1)
        cell = (ops.sigmoid(forget_gate) * cell
                + ops.sigmoid(input_gate) * ops.tanh(candidate))
        hidden = ops.sigmoid(output_gate) * ops.tanh(cell)
        projected = ops.matmul(hidden, self.projection_kernel)
        return projected, [projected, cell]

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, ProjectedLSTMCell)}
