"""NoisyTopKRouter against an independent NumPy transcription of the paper."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import NoisyTopKRouter
from sgmoe.layers._random import standard_normal
from sgmoe.layers.routers.noisy_top_k_router import probability_in_top_k
from tests import helpers
from tests.layers import numpy_reference as ref

NUM_TOKENS, DIM, NUM_EXPERTS = 10, 16, 6


def make_gating(k, seed=7, rng_seed=0, scale=0.5, **kwargs):
    """A built gating layer with random (non-zero) W_g and W_noise."""
    rng = np.random.RandomState(rng_seed)
    gating = NoisyTopKRouter(NUM_EXPERTS, k=k, seed=seed, **kwargs)
    gating.build((None, DIM))
    weights = [scale * rng.randn(DIM, NUM_EXPERTS).astype("float32")
               for _ in gating.weights]
    gating.set_weights(weights)
    return gating, weights


def first_noise(seed, shape):
    """The StandardNormal() draw a fresh layer with this seed makes first."""
    generator = keras.random.SeedGenerator(seed)
    return ops.convert_to_numpy(standard_normal(shape, generator))


def tokens(rng_seed=1, num_tokens=NUM_TOKENS):
    return np.random.RandomState(rng_seed).randn(num_tokens, DIM).astype(
        "float32")


def assert_matches_reference(result, expected, k):
    np.testing.assert_array_equal(ops.convert_to_numpy(result.expert_indices),
                                  expected["indices"])
    np.testing.assert_allclose(ops.convert_to_numpy(result.expert_weights),
                               expected["gates"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(result.importance),
                               expected["importance"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(result.load),
                               expected["load"], rtol=1e-4, atol=1e-5)
    losses = result.auxiliary_losses
    np.testing.assert_allclose(float(losses["importance_loss"]),
                               expected["importance_loss"], rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(float(losses["load_loss"]),
                               expected["load_loss"], rtol=1e-4, atol=1e-7)


def test_weights_start_at_zero_with_paper_shapes():
    gating = NoisyTopKRouter(NUM_EXPERTS, k=2)
    gating.build((None, DIM))
    assert tuple(gating.kernel.shape) == (DIM, NUM_EXPERTS)
    assert tuple(gating.noise_kernel.shape) == (DIM, NUM_EXPERTS)
    assert not np.any(ops.convert_to_numpy(gating.kernel))
    assert not np.any(ops.convert_to_numpy(gating.noise_kernel))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_training_matches_reference(k):
    gating, (w_gate, w_noise) = make_gating(k, seed=11)
    x = tokens()
    noise = first_noise(11, (NUM_TOKENS, NUM_EXPERTS))
    result = gating(x, training=True)
    expected = ref.noisy_top_k_gating(x, w_gate, w_noise, k, noise=noise)
    assert_matches_reference(result, expected, k)
    # The layer adds exactly L_importance + L_load in training.
    assert len(gating.losses) == 1
    np.testing.assert_allclose(
        float(gating.losses[0]),
        expected["importance_loss"] + expected["load_loss"], rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_inference_is_noise_free_and_counts_load(k):
    gating, (w_gate, w_noise) = make_gating(k)
    x = tokens()
    result = gating(x, training=False)
    expected = ref.noisy_top_k_gating(x, w_gate, w_noise, k, noise=None)
    assert_matches_reference(result, expected, k)
    assert gating.losses == []
    # Load is an integer count summing to tokens * k.
    load = ops.convert_to_numpy(result.load)
    np.testing.assert_array_equal(load, np.round(load))
    assert load.sum() == NUM_TOKENS * k


def test_k_equals_num_experts_routes_everything():
    gating, (w_gate, w_noise) = make_gating(NUM_EXPERTS, seed=3)
    x = tokens()
    result = gating(x, training=True)
    np.testing.assert_array_equal(ops.convert_to_numpy(result.load),
                                  np.full(NUM_EXPERTS, NUM_TOKENS))
    expected = ref.noisy_top_k_gating(
        x, w_gate, w_noise, NUM_EXPERTS,
        noise=first_noise(3, (NUM_TOKENS, NUM_EXPERTS)))
    assert_matches_reference(result, expected, NUM_EXPERTS)


def test_cv_squared_uses_population_variance():
    gating = NoisyTopKRouter(4, k=1, noisy=False, importance_weight=1.0,
                             load_weight=1.0)
    gating.build((None, 2))
    # Both tokens pick expert 0 (ties resolve to the lowest index): load is
    # [2, 0, 0, 0], mean 0.5, population variance 0.75, CV^2 = 3.
    result = gating(np.ones((2, 2), "float32"), training=False)
    np.testing.assert_allclose(float(result.auxiliary_losses["load_loss"]),
                               3.0, rtol=1e-6)


def test_kth_excluding_at_ties():
    # Noisy logits with ties around the k-th and (k+1)-th places.
    noisy = np.array([[1.0, 1.0, 1.0, 0.0],
                      [2.0, 1.0, 1.0, 1.0],
                      [0.5, 0.5, 3.0, 0.5],
                      [1.0, 2.0, 2.0, 2.0]], dtype="float32")
    clean = np.array([[0.3, -0.2, 0.1, 0.4],
                      [0.0, 0.5, -0.5, 0.2],
                      [0.1, 0.2, 0.3, 0.4],
                      [-1.0, 0.0, 1.0, 0.5]], dtype="float32")
    stddev = np.full_like(noisy, 0.7)
    for k in (1, 2, 3):
        ordered = -np.sort(-noisy, axis=1)
        result = ops.convert_to_numpy(probability_in_top_k(
            clean, noisy, stddev, kth_value=ordered[:, k - 1:k],
            next_value=ordered[:, k:k + 1]))
        expected = np.array([[
            ref.phi((clean[n, i] - ref.kth_excluding(noisy[n], k, i))
                    / stddev[n, i]) for i in range(4)] for n in range(4)])
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"k={k}")


def test_load_estimator_is_unbiased():
    """Averaged over noise, Load(X)_i equals the count of tokens sent to i."""
    k, replicas = 2, 4000
    gating, _ = make_gating(k, seed=5, scale=0.3)
    base = tokens(num_tokens=8)
    # Every replica of a token draws its own noise: one call is many draws.
    x = np.tile(base, (replicas, 1))
    result = gating(x, training=True)
    estimated = ops.convert_to_numpy(result.load) / replicas
    indices = ops.convert_to_numpy(result.expert_indices)
    empirical = np.bincount(indices.ravel(), minlength=NUM_EXPERTS) / replicas
    # Expected counts per token set are 8 * 2 / 6 on average; the empirical
    # count's standard error at 4000 replicas is below 0.03.
    np.testing.assert_allclose(estimated, empirical, atol=0.1)
    # The routing is far from uniform, so matching is not a coincidence.
    assert empirical.max() - empirical.min() > 1.0


@pytest.mark.parametrize("k", [2, 1])
def test_gradients_reach_gate_and_noise(k):
    gating, _ = make_gating(k, seed=2)
    x = tokens()
    target = np.random.RandomState(3).randn(NUM_TOKENS, k).astype("float32")

    def loss_fn(result, losses):
        task = ops.sum(result.expert_weights * target)
        return task + ops.sum(ops.stack(losses))

    _, grads = helpers.value_and_gradients(gating, loss_fn, x, training=True)
    for name in ("/kernel", "/noise_kernel"):
        grad = [g for path, g in grads.items() if path.endswith(name)][0]
        assert grad is not None and np.abs(grad).max() > 1e-6, name


def test_k1_trains_the_gate_kernel_without_noise():
    """Softmax of one value is constant; the Switch-style gate is not."""
    gating = NoisyTopKRouter(NUM_EXPERTS, k=1, noisy=False,
                             importance_weight=0.0, load_weight=0.0)
    gating.build((None, DIM))
    x = tokens()

    def loss_fn(result, losses):
        return ops.sum(result.expert_weights)

    _, grads = helpers.value_and_gradients(gating, loss_fn, x, training=True)
    assert np.abs(list(grads.values())[0]).max() > 1e-4
    # Starting from zeros every expert is equally likely: gate = 1 / E.
    result = gating(x)
    np.testing.assert_allclose(ops.convert_to_numpy(result.expert_weights),
                               1.0 / NUM_EXPERTS, rtol=1e-6)


def test_noise_is_seeded():
    x = tokens()
    first = make_gating(2, seed=9)[0](x, training=True)
    second = make_gating(2, seed=9)[0](x, training=True)
    np.testing.assert_array_equal(ops.convert_to_numpy(first.load),
                                  ops.convert_to_numpy(second.load))
