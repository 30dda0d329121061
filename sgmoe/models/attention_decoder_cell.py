"""The bottom decoder layer of the translation model: LSTM + attention."""

import contextlib

import keras
from keras import ops


class AttentionDecoderCell(keras.layers.Layer):
    """The bottom decoder LSTM and the attention, one step at a time.

    Input feeding: the LSTM reads [input_t; context_{t-1}], its output
    queries the attention, and the step returns [output_t; context_t]. The
    state is the LSTM's states followed by the context. Keras's RNN layer
    has no way to pass constants to a cell, so the attention memory is set
    for the duration of one RNN call with `attending`.
    """

    def __init__(self, lstm_cell, attention, memory_dim, **kwargs):
        super().__init__(**kwargs)
        self.lstm_cell = lstm_cell
        self.attention = attention
        self.memory_dim = memory_dim
        self.state_size = state_sizes(lstm_cell) + [memory_dim]
        self.output_size = lstm_cell.output_size + memory_dim
        # Plain attribute: tensors of one call, not tracked state.
        object.__setattr__(self, "_memory", None)

    def build(self, input_shape):
        self.lstm_cell.build((None, input_shape[-1] + self.memory_dim))
        self.attention.build((None, self.lstm_cell.output_size),
                             (None, None, self.memory_dim))
        self.built = True

    @contextlib.contextmanager
    def attending(self, keys, memory, memory_mask):
        object.__setattr__(self, "_memory", (keys, memory, memory_mask))
        try:
            yield
        finally:
            object.__setattr__(self, "_memory", None)

    def step(self, inputs, states, keys, memory, memory_mask):
        """([output; context] [batch, output + memory_dim], new states)."""
        *lstm_states, context = states
        output, lstm_states = self.lstm_cell(
            ops.concatenate([inputs, context], axis=-1), list(lstm_states))
        context, _ = self.attention.attend(output, keys, memory, memory_mask)
        context = ops.cast(context, output.dtype)
        return (ops.concatenate([output, context], axis=-1),
                list(lstm_states) + [context])

    def call(self, inputs, states, training=None):
        if self._memory is None:
            raise ValueError(
                "The attention decoder cell runs inside "
                "MoETranslationModel, which gives it the encoder outputs.")
        return self.step(inputs, states, *self._memory)


def state_sizes(cell):
    """A cell's state sizes as a list (Keras allows one int)."""
    sizes = cell.state_size
    return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]
