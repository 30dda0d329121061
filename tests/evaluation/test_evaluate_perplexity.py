"""The corpus perplexity of a compiled model, from `model.evaluate`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sgmoe.evaluation import evaluate_perplexity
from sgmoe.models import Perplexity

VOCABULARY = 7


def uniform_model(metrics):
    """Zero logits: every token has probability 1 / VOCABULARY."""
    model = keras.Sequential([
        keras.Input((5,), dtype="int32"),
        keras.layers.Embedding(VOCABULARY, 4),
        keras.layers.Dense(VOCABULARY, kernel_initializer="zeros")])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=metrics)
    return model


def dataset():
    ids = np.random.RandomState(0).randint(1, VOCABULARY, (6, 5))
    ids[:, 3:] = 0  # padding, not counted
    return tf.data.Dataset.from_tensor_slices((ids, ids)).batch(4)


class CountBatches(keras.callbacks.Callback):
    batches = 0

    def on_test_batch_end(self, batch, logs=None):
        self.batches += 1


def test_uniform_predictions_give_the_vocabulary_size():
    model = uniform_model([Perplexity(padding_id=0)])
    counter = CountBatches()
    perplexity = evaluate_perplexity(model, dataset(), callbacks=[counter])
    assert isinstance(perplexity, float)
    assert perplexity == pytest.approx(VOCABULARY, rel=1e-5)
    assert counter.batches == 2  # the whole dataset, callbacks passed on


def test_a_model_without_the_metric_raises():
    with pytest.raises(ValueError, match="Perplexity metric"):
        evaluate_perplexity(uniform_model([]), dataset())


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_a_dataset_without_batches_raises_a_data_error():
    from sgmoe.data import DataError

    # As a length filter that leaves no sentence: no batch at all.
    empty = dataset().filter(lambda inputs, targets: False)
    model = uniform_model([Perplexity(padding_id=0)])
    with pytest.raises(DataError, match="^no evaluation batches: every "
                                        "sentence was filtered out"):
        evaluate_perplexity(model, empty)
    # The same model still evaluates a dataset with batches afterwards.
    assert evaluate_perplexity(model, dataset()) == pytest.approx(
        VOCABULARY, rel=1e-5)
