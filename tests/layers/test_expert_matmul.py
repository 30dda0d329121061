"""expert_matmul: ops.matmul's value, gradients laid out by capacity."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import _expert_matmul
from sgmoe.layers import FeedForwardExperts
from sgmoe.layers._expert_matmul import expert_matmul
from tests import helpers


def value_and_grads(function, *args, jit=True):
    """function(*args) and its gradients with respect to every arg."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def run(*tensors):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                value = function(*tensors)
            return value, tape.gradient(value, tensors)

        if jit:
            run = tf.function(run, jit_compile=True)
        value, grads = run(*[tf.constant(a) for a in args])
    else:
        import jax

        run = jax.value_and_grad(function, argnums=tuple(range(len(args))))
        if jit:
            run = jax.jit(run)
        value, grads = run(*args)
    return float(value), [np.asarray(g) for g in grads]


def weighted_sum(inputs, kernel, upstream):
    """sum(upstream * (inputs @ kernel)): its input gradients are the VJP."""
    return ops.sum(ops.convert_to_tensor(upstream)
                   * expert_matmul(inputs, kernel))


@pytest.mark.parametrize("capacity", [1, 3, 64, 65, 130])
@pytest.mark.parametrize("jit", [True, False])
def test_value_and_gradients_match_numpy(capacity, jit):
    # C <= 64 takes the feature-major gradient, C > 64 automatic
    # differentiation; both must give the matmul's own gradients.
    rng = np.random.RandomState(capacity)
    inputs = rng.randn(3, capacity, 5).astype("float32")
    kernel = rng.randn(3, 5, 7).astype("float32")
    upstream = rng.randn(3, capacity, 7).astype("float32")

    value, (inputs_grad, kernel_grad) = value_and_grads(
        lambda x, w: weighted_sum(x, w, upstream), inputs, kernel, jit=jit)

    np.testing.assert_allclose(
        value, np.sum(upstream * np.matmul(inputs, kernel)), rtol=1e-5)
    np.testing.assert_allclose(
        inputs_grad, np.matmul(upstream, kernel.transpose(0, 2, 1)),
        rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        kernel_grad, np.matmul(inputs.transpose(0, 2, 1), upstream),
        rtol=1e-5, atol=1e-5)


def test_small_capacities_take_the_custom_gradient(monkeypatch):
    calls = []
    original = _expert_matmul._feature_major_gradient_matmul
    monkeypatch.setattr(_expert_matmul, "_feature_major_gradient_matmul",
                        lambda *a: calls.append(a[0].shape) or original(*a))
    small = _expert_matmul.FEATURE_MAJOR_MAX_CAPACITY
    expert_matmul(np.ones((2, small, 3), "float32"),
                  np.ones((2, 3, 4), "float32"))
    expert_matmul(np.ones((2, small + 1, 3), "float32"),
                  np.ones((2, 3, 4), "float32"))
    assert [tuple(shape) for shape in calls] == [(2, small, 3)]


def test_a_non_finite_upstream_value_reaches_only_its_own_rows():
    # The layout pins add 0 * (the feature-major input gradient): a NaN in
    # expert 1's upstream stays in its own input-gradient row and in
    # expert 1's kernel gradient.
    rng = np.random.RandomState(0)
    inputs = rng.randn(2, 4, 3).astype("float32")
    kernel = rng.randn(2, 3, 5).astype("float32")
    upstream = rng.randn(2, 4, 5).astype("float32")
    upstream[1, 2, 0] = np.nan
    _, (inputs_grad, kernel_grad) = value_and_grads(
        lambda x, w: weighted_sum(x, w, upstream), inputs, kernel)
    assert np.isnan(inputs_grad[1, 2]).all()
    assert np.isfinite(np.delete(inputs_grad[1], 2, axis=0)).all()
    assert np.isfinite(inputs_grad[0]).all()
    assert np.isfinite(kernel_grad[0]).all()


def test_experts_gradients_equal_automatic_differentiation(monkeypatch):
    # The whole expert network, bias and ReLU included, at a capacity that
    # takes the custom gradient, against plain ops.matmul.
    x = np.random.RandomState(1).randn(4, 6, 16).astype("float32")

    def loss_fn(outputs, losses):
        return ops.sum(ops.square(outputs))

    results = []
    for custom in (True, False):
        if not custom:
            monkeypatch.setattr(_expert_matmul, "FEATURE_MAJOR_MAX_CAPACITY",
                                0)
        keras.utils.set_random_seed(7)
        experts = FeedForwardExperts(4, 32, name="experts")
        experts.build(x.shape)
        results.append(helpers.value_and_gradients(experts, loss_fn, x))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert sorted(grads_a) == sorted(grads_b)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
