"""Perplexity of a language model as a Keras metric."""

import keras
from keras import ops

from sgmoe import _validation


@keras.saving.register_keras_serializable(package="sgmoe")
class Perplexity(keras.metrics.Metric):
    """exp of the mean token cross-entropy over the non-padding tokens seen.

    Accumulates sum(weight * cross_entropy) and sum(weight) over all batches
    since the last reset, where a token's weight is its sample weight (1 by
    default) and 0 where the target is `padding_id`; the result is
    exp(total / count). This is the corpus perplexity (Shazeer et al. 2017
    report it on the 1B Word test set), not a mean of per-batch
    perplexities.

    Args:
        from_logits: whether predictions are logits (default) or
            probabilities.
        padding_id: target id that is not counted; None counts every token.
        name: metric name.
        dtype: dtype of the accumulators.

    Update arguments:
        y_true: int targets [...].
        y_pred: logits or probabilities [..., V].
        sample_weight: optional weights broadcastable to [...].

    Example:

    >>> metric = Perplexity(padding_id=0)
    >>> metric.update_state([[1, 2, 0]], ops.zeros((1, 3, 4)))
    >>> round(float(metric.result()), 4)  # uniform over 4 words
    4.0
    """

    def __init__(self, from_logits=True, padding_id=None, name="perplexity",
                 dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.padding_id = _validation.check_optional_id("padding_id",
                                                        padding_id)
        self.total_cross_entropy = self.add_variable(
            shape=(), initializer="zeros", dtype="float32",
            name="total_cross_entropy")
        self.token_count = self.add_variable(
            shape=(), initializer="zeros", dtype="float32",
            name="token_count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits)
        weights = token_weights(y_true, self.padding_id, sample_weight)
        self.total_cross_entropy.assign_add(ops.sum(cross_entropy * weights))
        self.token_count.assign_add(ops.sum(weights))

    def result(self):
        return ops.exp(ops.divide_no_nan(self.total_cross_entropy,
                                         self.token_count))

    def reset_state(self):
        self.total_cross_entropy.assign(0.0)
        self.token_count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype,
                "from_logits": self.from_logits,
                "padding_id": self.padding_id}


def token_weights(targets, padding_id=None, sample_weight=None):
    """float32 weights of the shape of `targets`: 0 at padding, else the
    sample weight (broadcast over trailing axes) or 1."""
    weights = ops.ones(ops.shape(targets), dtype="float32")
    if padding_id is not None:
        weights = ops.cast(ops.not_equal(targets, padding_id), "float32")
    if sample_weight is not None:
        sample_weight = ops.cast(ops.convert_to_tensor(sample_weight),
                                 "float32")
        while len(sample_weight.shape) < len(targets.shape):
            sample_weight = ops.expand_dims(sample_weight, -1)
        weights = weights * sample_weight
    return weights
