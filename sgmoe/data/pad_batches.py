"""Filling short batches up to a fixed batch size."""

import tensorflow as tf

from sgmoe import _validation


def pad_batches(dataset, batch_size):
    """Pads every batch of `dataset` to `batch_size` rows of padding (0).

    A data-parallel mesh splits each batch evenly over its "batch" axis, so
    every batch must have the same number of rows; a finite evaluation set
    ends with a short batch (and bucketing can leave more). The added rows
    are all padding, which the models' losses and `Perplexity` ignore, so
    evaluation results do not change as long as no MoE drops an
    assignment because of them.

    Args:
        dataset: a `tf.data.Dataset` of (nested) int tensors [batch, time],
            as `language_model_dataset` and `translation_dataset` give.
        batch_size: the number of rows of every batch.

    Returns:
        The dataset with every batch [batch_size, time].

    Raises:
        ValueError: a batch with more than `batch_size` rows (at run time,
            as `tf.errors.InvalidArgumentError`), or an invalid
            `batch_size`.
    """
    batch_size = _validation.check_positive_int("batch_size", batch_size)

    def pad(tensor):
        rows = tf.shape(tensor)[0]
        tf.debugging.assert_less_equal(
            rows, batch_size, message="a batch is larger than `batch_size`")
        padding = [[0, batch_size - rows]] + [[0, 0]] * (
            tensor.shape.rank - 1)
        padded = tf.pad(tensor, padding)
        return tf.ensure_shape(padded, [batch_size] + tensor.shape[1:])

    return dataset.map(lambda *batch: tf.nest.map_structure(
        pad, batch if len(batch) > 1 else batch[0]))
