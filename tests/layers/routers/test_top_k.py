"""`top_k_per_token`: the routers' top-k, equal to ops.top_k."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers.routers import top_k


@pytest.mark.parametrize("k", [1, 2, 3, 5, top_k.MAX_PASSES + 1])
def test_top_k_per_token_equals_top_k_with_ties(k):
    # Small integers: many equal values in a row, where the lower index
    # must come first, as in ops.top_k and np.argsort(-x, stable).
    rng = np.random.RandomState(k)
    values = rng.randint(-3, 4, size=(3, 7, 12)).astype("float32")
    top_values, top_indices = top_k.top_k_per_token(
        ops.convert_to_tensor(values), k)
    expected_indices = np.argsort(-values, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(ops.convert_to_numpy(top_indices),
                                  expected_indices)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(top_values),
        np.take_along_axis(values, expected_indices, axis=-1))
    assert ops.convert_to_numpy(top_indices).dtype == np.int32


def test_top_k_per_token_passes_gradients_to_the_chosen_values():
    values = np.array([[0.5, 2.0, -1.0, 1.0]], "float32")
    weights = ops.convert_to_tensor(np.array([[3.0, 5.0]], "float32"))

    def loss(v):
        top_values, _ = top_k.top_k_per_token(v, 2)
        return ops.sum(top_values * weights)

    if keras.backend.backend() == "jax":
        import jax
        gradient = jax.grad(loss)(ops.convert_to_tensor(values))
    else:
        import tensorflow as tf
        tensor = tf.constant(values)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            total = loss(tensor)
        gradient = tape.gradient(total, tensor)
    np.testing.assert_allclose(ops.convert_to_numpy(gradient),
                               [[0.0, 3.0, 0.0, 5.0]])
