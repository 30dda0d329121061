"""HierarchicalMixtureOfExperts against a token-by-token NumPy reference."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers._random import standard_normal
from tests import helpers
from tests.layers import numpy_reference as ref

NUM_TOKENS, DIM, HIDDEN = 12, 16, 8
GROUPS, PER_GROUP = 3, 4


def build_layer(k_primary=2, k_secondary=2, capacity_factor=None, seed=3,
                **kwargs):
    """A built layer with random gates; capacity ample unless given."""
    if capacity_factor is None:
        # C1 = N and C2 = C1: nothing can be dropped.
        capacity_factor = float(GROUPS * PER_GROUP)
    layer = HierarchicalMixtureOfExperts(
        GROUPS, PER_GROUP, k_primary, k_secondary, expert_hidden_dim=HIDDEN,
        capacity_factor=capacity_factor, seed=seed, **kwargs)
    layer.build((None, DIM))
    rng = np.random.RandomState(seed)
    for weight in (layer.primary_w_gate, layer.primary_w_noise,
                   layer.secondary_w_gate, layer.secondary_w_noise):
        weight.assign(0.7 * rng.randn(*weight.shape).astype("float32"))
    experts = layer.experts
    experts.bias_in.assign(0.1 * rng.randn(*experts.bias_in.shape))
    experts.bias_out.assign(0.1 * rng.randn(*experts.bias_out.shape))
    return layer


def tokens(seed=1, num_tokens=NUM_TOKENS):
    return np.random.RandomState(seed).randn(num_tokens, DIM).astype(
        "float32")


def reference(layer, x, training, primary_capacity=None,
              secondary_capacity=None):
    weights = {name: ops.convert_to_numpy(getattr(layer, name)) for name in (
        "primary_w_gate", "primary_w_noise", "secondary_w_gate",
        "secondary_w_noise")}
    experts = [ops.convert_to_numpy(w) for w in (
        layer.experts.kernel_in, layer.experts.bias_in,
        layer.experts.kernel_out, layer.experts.bias_out)]
    primary_noise = secondary_noise = None
    if training:
        # The layer's first two draws: [N, G], then [G, C1, E_g].
        generator = keras.random.SeedGenerator(layer.seed)
        primary_noise = ops.convert_to_numpy(
            standard_normal((x.shape[0], GROUPS), generator))
        slots = primary_capacity or x.shape[0]
        secondary_noise = ops.convert_to_numpy(
            standard_normal((GROUPS, slots, PER_GROUP), generator))
    return ref.hierarchical_mixture(
        x, weights["primary_w_gate"], weights["primary_w_noise"],
        weights["secondary_w_gate"], weights["secondary_w_noise"],
        layer.k_primary, layer.k_secondary, experts,
        primary_noise=primary_noise, secondary_noise=secondary_noise,
        primary_capacity=primary_capacity,
        secondary_capacity=secondary_capacity)


def assert_matches(layer, y, expected):
    np.testing.assert_allclose(ops.convert_to_numpy(y), expected["y"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.expert_importance),
                               expected["importance"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.expert_load),
                               expected["load"], rtol=1e-4, atol=1e-5)
    for name in ("importance_loss", "load_loss"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(layer.auxiliary_losses[name]),
            expected[name], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.dropped_fraction),
                               expected["dropped_fraction"], atol=1e-6)


@pytest.mark.parametrize("k_primary, k_secondary", [(2, 2), (1, 3), (3, 1)])
def test_training_matches_reference_with_noise(k_primary, k_secondary):
    layer = build_layer(k_primary, k_secondary)
    x = tokens()
    y = layer(x, training=True)
    expected = reference(layer, x, training=True)
    assert_matches(layer, y, expected)
    # The losses go to the layer in training, and only the two of them.
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(layer.losses[0])),
        expected["importance_loss"] + expected["load_loss"], rtol=1e-4)


def test_inference_matches_reference_without_noise():
    layer = build_layer()
    x = tokens(seed=2)
    y = layer(x, training=False)
    expected = reference(layer, x, training=False)
    assert_matches(layer, y, expected)
    assert not layer.losses
    # Without noise, Load_H is a count: each reached group's assignments.
    np.testing.assert_allclose(np.sum(expected["load"]),
                               NUM_TOKENS * 2 * 2, rtol=1e-6)
    # ... which is what each expert computed, nothing dropped.
    np.testing.assert_allclose(ops.convert_to_numpy(layer.expert_dispatched),
                               expected["load"], rtol=1e-6)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(layer.expert_dropped), 0.0)


def test_capacity_drops_at_both_levels_exactly():
    layer = build_layer(capacity_factor=0.75, eval_capacity_factor=0.75)
    x = tokens(seed=4)
    y = layer(x, training=False)
    primary_capacity = int(np.ceil(0.75 * NUM_TOKENS * 2 / GROUPS))
    secondary_capacity = min(primary_capacity, int(np.ceil(
        0.75 * NUM_TOKENS * 2 * 2 / (GROUPS * PER_GROUP))))
    expected = reference(layer, x, training=False,
                         primary_capacity=primary_capacity,
                         secondary_capacity=secondary_capacity)
    assert expected["dropped_fraction"] > 0.0
    assert_matches(layer, y, expected)
    # Per expert: only a full expert drops, and the computed assignments
    # are all that was kept.
    dispatched = ops.convert_to_numpy(layer.expert_dispatched)
    dropped = ops.convert_to_numpy(layer.expert_dropped)
    assert dispatched.max() <= secondary_capacity
    assert dropped.sum() > 0
    np.testing.assert_array_equal(dispatched[dropped > 0],
                                  secondary_capacity)
    np.testing.assert_allclose(
        dispatched.sum(), NUM_TOKENS * 4 * (1 - expected["dropped_fraction"]),
        rtol=1e-5)


def test_leading_axes_are_one_macro_batch():
    layer = build_layer()
    x = tokens(num_tokens=12)
    flat = ops.convert_to_numpy(layer(x, training=False))
    nested = ops.convert_to_numpy(layer(x.reshape(2, 3, 2, DIM),
                                        training=False))
    np.testing.assert_allclose(nested.reshape(12, DIM), flat, rtol=1e-6)


def test_load_loss_trains_the_primary_gate():
    layer = build_layer()
    x = tokens()

    def balancing_losses_only(outputs, losses):
        return sum(losses)

    _, grads = helpers.value_and_gradients(
        layer, balancing_losses_only, x, training=True)
    for name in ("primary_w_gate", "primary_w_noise", "secondary_w_gate",
                 "secondary_w_noise"):
        assert np.abs(grads[getattr(layer, name).path]).sum() > 0, name

    def task_loss(outputs, losses):
        return ops.sum(ops.square(outputs))

    _, grads = helpers.value_and_gradients(layer, task_loss, x, training=True)
    for weight in layer.experts.trainable_variables:
        assert np.abs(grads[weight.path]).sum() > 0, weight.path
