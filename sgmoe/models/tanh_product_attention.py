"""The attention function of Shazeer et al. 2017, Appendix G."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config

# Added to the scores of masked source positions: exp() of it is 0 in
# float32, and unlike -inf it gives no NaN when a whole row is masked.
_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="sgmoe")
class TanhProductAttention(keras.layers.Layer):
    """A(x_i, y_j) = sum_d V_d tanh((x_i U)_d) tanh((y_j W)_d).

    Shazeer et al. 2017, "Outrageously Large Neural Networks",
    arXiv:1701.06538, Appendix G. GNMT (Wu et al. 2016) scores a source
    vector x_i against a target vector y_j with a one-hidden-layer network,
    sum_d V_d tanh((x_i U)_d + (y_j W)_d); the paper's translation models
    use the product form instead, so that tanh(x U) is computed once for all
    source positions and the scores of many (source, target) pairs are one
    batched matrix product. The attention weights are a softmax of the
    scores over the source positions (masked positions excluded), and the
    context is the weighted sum of the source vectors.

    Here the source vectors x are the encoder outputs (the `memory`) and the
    target vector y is the decoder's query, so U is `memory_kernel`
    [d_memory, attention_dim], W is `query_kernel` [d_query, attention_dim]
    and V is `score_vector` [attention_dim]. Scores and softmax are computed
    in float32.

    `memory_keys(memory)` computes tanh(x U) once; `attend(query, keys,
    memory, mask)` then scores a query against them, which is what an
    incremental decoder calls at every step.

    Args:
        attention_dim: the number of hidden units d summed over.
        kernel_initializer: initializer of U, W and V.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        query: [batch, d_query] (one decoder step) or
            [batch, target_length, d_query].
        memory: [batch, source_length, d_memory].
        memory_mask: optional bool [batch, source_length]; false positions
            (padding) get zero attention weight.
        return_attention_scores: also return the attention weights.

    Returns:
        The context [batch, (target_length,) d_memory], and with
        `return_attention_scores` the weights [batch, (target_length,)
        source_length] (float32).

    Example:

    >>> attention = TanhProductAttention(attention_dim=8)
    >>> context = attention(ops.ones((2, 16)), ops.ones((2, 5, 16)))
    >>> tuple(context.shape)
    (2, 16)
    """

    def __init__(self, attention_dim, kernel_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.attention_dim = _validation.check_positive_int(
            "attention_dim", attention_dim)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, query_shape, memory_shape=None, memory_mask_shape=None):
        if memory_shape is None:
            memory_shape = query_shape
        for name, shape in (("query", query_shape), ("memory", memory_shape)):
            if shape[-1] is None:
                raise ValueError(
                    f"The last dimension of `{name}` to TanhProductAttention "
                    f"must be known, received shape {tuple(shape)}.")
        self.query_kernel = self.add_weight(
            name="query_kernel", shape=(query_shape[-1], self.attention_dim),
            initializer=self.kernel_initializer)
        self.memory_kernel = self.add_weight(
            name="memory_kernel",
            shape=(memory_shape[-1], self.attention_dim),
            initializer=self.kernel_initializer)
        self.score_vector = self.add_weight(
            name="score_vector", shape=(self.attention_dim,),
            initializer=self.kernel_initializer)

    def memory_keys(self, memory):
        """tanh(x U) [batch, source_length, attention_dim], float32."""
        return ops.tanh(ops.cast(ops.matmul(memory, self.memory_kernel),
                                 "float32"))

    def scores(self, query, keys, memory_mask=None):
        """A(x_i, y) for every source position i: [batch, (T,) S]."""
        # V * tanh(y W): [batch, (T,) attention_dim].
        weighted_query = ops.tanh(ops.cast(
            ops.matmul(query, self.query_kernel), "float32")) * ops.cast(
                self.score_vector, "float32")
        single_step = len(query.shape) == 2
        if single_step:
            weighted_query = ops.expand_dims(weighted_query, 1)
        scores = ops.einsum("bta,bsa->bts", weighted_query, keys)
        if memory_mask is not None:
            scores = ops.where(ops.expand_dims(memory_mask, 1), scores,
                               _MASKED_SCORE)
        return scores[:, 0] if single_step else scores

    def attend(self, query, keys, memory, memory_mask=None):
        """(context, weights) of a query against precomputed keys."""
        weights = ops.softmax(self.scores(query, keys, memory_mask), axis=-1)
        single_step = len(query.shape) == 2
        step_weights = (ops.expand_dims(weights, 1) if single_step
                        else weights)
        context = ops.einsum("bts,bsd->btd",
                             ops.cast(step_weights, memory.dtype), memory)
        return (context[:, 0] if single_step else context), weights

    def call(self, query, memory, memory_mask=None,
             return_attention_scores=False):
        context, weights = self.attend(query, self.memory_keys(memory),
                                       memory, memory_mask)
        if return_attention_scores:
            return context, weights
        return context

    def compute_output_shape(self, query_shape, memory_shape):
        return tuple(query_shape[:-1]) + (memory_shape[-1],)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, TanhProductAttention)}
