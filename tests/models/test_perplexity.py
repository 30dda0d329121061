"""Perplexity against NumPy: padding, sample weights, accumulation."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.models import Perplexity
from tests.models import numpy_reference as ref


def batch(seed, shape=(3, 4), vocabulary=7):
    rng = np.random.RandomState(seed)
    targets = rng.randint(0, vocabulary, shape)
    targets[0, 2:] = 0  # padding
    logits = rng.randn(*shape, vocabulary).astype("float32")
    return targets, logits


def numpy_perplexity(batches, padding_id=None, weights=None):
    total = count = 0.0
    for i, (targets, logits) in enumerate(batches):
        log_probs = ref.log_softmax(logits.astype(np.float64))
        nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
        w = np.ones_like(nll)
        if padding_id is not None:
            w = w * (targets != padding_id)
        if weights is not None:
            w = w * weights[i][:, None]
        total += (nll * w).sum()
        count += w.sum()
    return np.exp(total / count)


def test_matches_numpy_over_several_batches_with_padding():
    batches = [batch(0), batch(1)]
    metric = Perplexity(padding_id=0)
    for targets, logits in batches:
        metric.update_state(targets, logits)
    # The corpus perplexity: not the mean of the two batch perplexities.
    expected = numpy_perplexity(batches, padding_id=0)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-5)
    per_batch = np.mean([numpy_perplexity([b], padding_id=0)
                         for b in batches])
    assert abs(per_batch - expected) > 1e-3
    # Without a padding id every token counts.
    every = Perplexity()
    for targets, logits in batches:
        every.update_state(targets, logits)
    np.testing.assert_allclose(float(every.result()),
                               numpy_perplexity(batches), rtol=1e-5)
    metric.reset_state()
    assert float(metric.result()) == 1.0  # exp(0 / 0 -> 0)


def test_sample_weights_and_probabilities():
    targets, logits = batch(2)
    weights = np.array([1.0, 0.0, 2.0], dtype="float32")
    metric = Perplexity(padding_id=0)
    metric.update_state(targets, logits, sample_weight=weights)
    np.testing.assert_allclose(
        float(metric.result()),
        numpy_perplexity([(targets, logits)], padding_id=0,
                         weights=[weights]), rtol=1e-5)
    probabilities = Perplexity(from_logits=False, padding_id=0)
    probabilities.update_state(targets, ref.softmax(logits))
    np.testing.assert_allclose(
        float(probabilities.result()),
        numpy_perplexity([(targets, logits)], padding_id=0), rtol=1e-4)


def test_uniform_prediction_has_vocabulary_size_perplexity():
    metric = Perplexity()
    metric.update_state(np.array([[3, 1]]), ops.zeros((1, 2, 50)))
    assert float(metric.result()) == pytest.approx(50.0, rel=1e-5)


def test_config_round_trip_and_arguments():
    metric = Perplexity(padding_id=0, name="ppl")
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric))
    assert isinstance(clone, Perplexity)
    assert clone.get_config() == metric.get_config()
    with pytest.raises(ValueError, match="padding_id"):
        Perplexity(padding_id=0.5)
