"""The gating noise is standard normal, seeded, and advances per draw."""

import keras
import numpy as np
from keras import ops

from sgmoe.layers._random import standard_normal
from sgmoe.layers._random import uniform


def test_draws_are_standard_normal():
    draws = ops.convert_to_numpy(
        standard_normal((400, 500), keras.random.SeedGenerator(3))).ravel()
    assert draws.dtype == np.float32
    # Standard errors at 200,000 draws: mean 0.0022, std 0.0016.
    assert abs(draws.mean()) < 0.01
    assert abs(draws.std() - 1.0) < 0.01
    # Normal, not just unit variance: 68.27% within one sigma, 95.45% in two.
    assert abs(np.mean(np.abs(draws) < 1.0) - 0.6827) < 0.005
    assert abs(np.mean(np.abs(draws) < 2.0) - 0.9545) < 0.003


def test_seeded_and_advancing():
    first = keras.random.SeedGenerator(5)
    second = keras.random.SeedGenerator(5)
    a = ops.convert_to_numpy(standard_normal((3, 4), first))
    b = ops.convert_to_numpy(standard_normal((3, 4), second))
    np.testing.assert_array_equal(a, b)
    c = ops.convert_to_numpy(standard_normal((3, 4), first))
    assert not np.allclose(a, c)


def test_uniform_draws_fill_the_interval():
    draws = ops.convert_to_numpy(uniform(
        (400, 500), 0.9, 1.1, keras.random.SeedGenerator(4))).ravel()
    assert draws.dtype == np.float32
    assert draws.min() >= 0.9 and draws.max() < 1.1
    # Mean 1.0 and variance 0.2^2 / 12 of U(0.9, 1.1); ten equal bins.
    assert abs(draws.mean() - 1.0) < 0.001
    assert abs(draws.var() - 0.04 / 12) < 0.0001
    counts, _ = np.histogram(draws, bins=10, range=(0.9, 1.1))
    assert np.abs(counts / draws.size - 0.1).max() < 0.005
