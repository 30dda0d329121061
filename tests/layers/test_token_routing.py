"""`MoELayer.route` and `route_tokens`: the per-token routing of inference.

The routing a layer reports must be the one its output is made of: the
layer's inference output equals the every-expert reference
sum_j w_j E_{i_j}(x) over the reported (index, weight) pairs, for every
router and the hierarchical MoE; the paper's gate is also checked
against its NumPy reference directly.
"""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import find_moe_layers
from sgmoe.layers import route_tokens
from tests.layers import numpy_reference as ref
from tests.layers.test_inference_without_drops import expert_weights

DIM, HIDDEN, NUM_EXPERTS = 16, 24, 6

LAYERS = {
    "noisy_top_k_1": lambda: MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=1),
    "noisy_top_k_3": lambda: MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=3),
    "switch": lambda: MixtureOfExperts(NUM_EXPERTS, HIDDEN, router="switch"),
    "gshard": lambda: MixtureOfExperts(NUM_EXPERTS, HIDDEN, router="gshard"),
    "expert_choice": lambda: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, router="expert_choice"),
    "strictly_balanced": lambda: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, k=2, router="strictly_balanced"),
    "hierarchical": lambda: HierarchicalMixtureOfExperts(
        3, 2, k_primary=2, k_secondary=2, expert_hidden_dim=HIDDEN),
}


def built(case, seed=0):
    """The layer, built, with random gates (they start at zero)."""
    layer = LAYERS[case]()
    layer.build((None, DIM))
    rng = np.random.RandomState(seed)
    for variable in layer.trainable_weights:
        if "experts" not in variable.path:
            variable.assign(rng.randn(*variable.shape).astype("float32"))
    for variable in (layer.experts.bias_in, layer.experts.bias_out):
        variable.assign(0.1 * rng.randn(*variable.shape).astype("float32"))
    return layer


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_inference_output_is_the_mixture_of_the_reported_routing(case):
    layer = built(case)
    x = np.random.RandomState(1).randn(3, 8, DIM).astype("float32")
    routing = layer.route(x)
    indices = ops.convert_to_numpy(routing.expert_indices)
    weights = ops.convert_to_numpy(routing.expert_weights)
    assert indices.shape[:2] == (3, 8) and weights.shape == indices.shape
    assert indices.dtype == np.int32
    # Sorted by decreasing gate; padding (-1, 0) only after real choices.
    assert np.all(np.diff(weights, axis=-1) <= 0)
    assert np.all((indices == -1) == (weights == 0))
    assert np.all(indices < NUM_EXPERTS)
    flat_indices = indices.reshape(-1, indices.shape[-1])
    expected = ref.dense_mixture(
        x.reshape(-1, DIM), np.maximum(flat_indices, 0),
        weights.reshape(-1, indices.shape[-1]), *expert_weights(layer),
        kept=flat_indices >= 0)
    outputs = ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(outputs.reshape(-1, DIM), expected,
                               rtol=1e-4, atol=1e-5)


def test_noisy_top_k_routing_is_the_papers_gate():
    layer = built("noisy_top_k_3")
    x = np.random.RandomState(2).randn(20, DIM).astype("float32")
    gate = ops.convert_to_numpy(layer.router.kernel)
    expected = ref.noisy_top_k_gating(x, gate, None, 3)
    routing = layer.route(x)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(routing.expert_indices), expected["indices"])
    np.testing.assert_allclose(ops.convert_to_numpy(routing.expert_weights),
                               expected["gates"], rtol=1e-5, atol=1e-6)


def test_expert_choice_reports_every_expert_that_took_a_token():
    layer = built("expert_choice")
    x = np.random.RandomState(3).randn(12, DIM).astype("float32")
    slots = layer.router(x, training=False)
    slot_token = ops.convert_to_numpy(slots.slot_token)
    slot_weight = ops.convert_to_numpy(slots.slot_weight)
    routing = layer.route(x)
    indices = ops.convert_to_numpy(routing.expert_indices)
    weights = ops.convert_to_numpy(routing.expert_weights)
    assert indices.shape == (12, NUM_EXPERTS)
    for token in range(12):
        taken = {(e, round(float(w), 6))
                 for e in range(NUM_EXPERTS)
                 for t, w in zip(slot_token[e], slot_weight[e])
                 if w > 0 and t == token}
        reported = {(int(e), round(float(w), 6))
                    for e, w in zip(indices[token], weights[token]) if e >= 0}
        assert reported == taken


def test_route_tokens_records_each_moe_layer_of_a_model_and_restores_it():
    inputs = keras.Input((7, DIM))
    first = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=2, name="first")
    second = MixtureOfExperts(NUM_EXPERTS, HIDDEN, router="switch",
                              name="second")
    hidden = keras.layers.Dense(DIM, activation="tanh")(first(inputs))
    model = keras.Model(inputs, second(hidden))
    for layer in (first, second):
        for variable in layer.trainable_weights:
            if "experts" not in variable.path:
                variable.assign(np.random.RandomState(4).randn(
                    *variable.shape).astype("float32"))
    x = np.random.RandomState(5).randn(2, 7, DIM).astype("float32")
    before = ops.convert_to_numpy(model(x, training=False))

    routing = route_tokens(model, x)

    assert list(routing) == list(find_moe_layers(model)) == ["first",
                                                             "second"]
    np.testing.assert_array_equal(
        ops.convert_to_numpy(routing["first"].expert_indices),
        ops.convert_to_numpy(first.route(x).expert_indices))
    # The second layer's input is the Dense output, not x.
    hidden_x = ops.convert_to_numpy(keras.Model(inputs, hidden)(x))
    np.testing.assert_allclose(
        ops.convert_to_numpy(routing["second"].expert_weights),
        ops.convert_to_numpy(second.route(hidden_x).expert_weights),
        rtol=1e-6)
    assert "call" not in vars(first) and "call" not in vars(second)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model(x, training=False)), before)
