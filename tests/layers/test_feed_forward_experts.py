"""FeedForwardExperts: per-expert initialisation and rematerialisation."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import FeedForwardExperts
from tests import helpers


def test_default_initialisation_is_glorot_per_expert():
    experts = FeedForwardExperts(num_experts=64, hidden_dim=96)
    experts.build((64, None, 32))
    kernel = ops.convert_to_numpy(experts.kernel_in)
    # Glorot uniform for one [32, 96] matrix: limit sqrt(6 / (32 + 96)).
    limit = np.sqrt(6.0 / (32 + 96))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.95 * limit
    np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3.0), rtol=0.02)


def loss_fn(outputs, losses):
    return ops.sum(ops.square(outputs))


def test_rematerialisation_gives_the_same_outputs_and_gradients():
    x = np.random.RandomState(0).randn(4, 6, 16).astype("float32")
    results = []
    for rematerialize in (False, True):
        keras.utils.set_random_seed(5)
        experts = FeedForwardExperts(4, 32, rematerialize=rematerialize,
                                     name="experts")
        experts.build(x.shape)
        outputs = ops.convert_to_numpy(experts(x))
        loss, grads = helpers.value_and_gradients(experts, loss_fn, x)
        results.append((outputs, loss, grads))
    (out_a, loss_a, grads_a), (out_b, loss_b, grads_b) = results
    np.testing.assert_allclose(out_a, out_b, rtol=1e-6)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert set(grads_a) == set(grads_b)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_dropout_inside_the_experts_only_in_training():
    rate, hidden = 0.5, 4000
    experts = FeedForwardExperts(num_experts=2, hidden_dim=hidden,
                                 dropout=rate, seed=3)
    rng = np.random.RandomState(0)
    x = np.abs(rng.randn(2, 3, 8)).astype("float32")
    experts.build(x.shape)
    # Positive hidden units and an averaging output layer: the output is
    # the mean hidden activation, which inverted dropout keeps in
    # expectation with a relative spread of about 1 / sqrt(hidden).
    experts.kernel_in.assign(np.abs(rng.randn(2, 8, hidden)).astype(
        "float32"))
    experts.kernel_out.assign(np.full((2, hidden, 8), 1.0 / hidden,
                                      "float32"))
    expected = np.einsum("ecd,edh->ech", x,
                         ops.convert_to_numpy(experts.kernel_in)).mean(-1)
    expected = np.repeat(expected[..., None], 8, axis=-1)
    np.testing.assert_allclose(ops.convert_to_numpy(experts(x)), expected,
                               rtol=1e-4)
    dropped = ops.convert_to_numpy(experts(x, training=True))
    assert np.abs(dropped / expected - 1).max() > 1e-3
    np.testing.assert_allclose(dropped, expected, rtol=0.1)
    restored = FeedForwardExperts.from_config(experts.get_config())
    assert restored.dropout == rate and restored.seed == 3


def test_dropout_rejects_bad_rates_and_rematerialization():
    with pytest.raises(ValueError, match="`dropout`"):
        FeedForwardExperts(num_experts=2, hidden_dim=4, dropout=1.0)
    with pytest.raises(ValueError, match="`dropout`"):
        FeedForwardExperts(num_experts=2, hidden_dim=4, dropout=0.1,
                           rematerialize=True)
