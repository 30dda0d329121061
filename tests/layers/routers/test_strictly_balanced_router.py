"""StrictlyBalancedRouter against NumPy: masks, threshold loss, learning."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import MixtureOfExperts
from sgmoe.layers.routers.routing_result import ExpertSlots
from sgmoe.layers.routers.strictly_balanced_router import StrictlyBalancedRouter
from tests.helpers import value_and_gradients
from tests.layers import numpy_reference
from tests.layers import slot_routing_reference as ref

NUM_TOKENS, DIM, NUM_EXPERTS = 12, 8, 4
LOSS = "batchwise_threshold_loss"


def make_gating(threshold=None, **kwargs):
    gating = StrictlyBalancedRouter(NUM_EXPERTS, **kwargs)
    gating.build((None, DIM))
    w_gate = np.random.RandomState(0).randn(DIM, NUM_EXPERTS).astype(
        "float32")
    if threshold is None:
        threshold = np.random.RandomState(3).uniform(
            0.05, 0.3, NUM_EXPERTS).astype("float32")
    gating.kernel.assign(w_gate)
    gating.threshold.assign(np.asarray(threshold, "float32"))
    return gating, w_gate, np.asarray(threshold, "float32")


def tokens(seed=1, num_tokens=NUM_TOKENS):
    return np.random.RandomState(seed).randn(num_tokens, DIM).astype(
        "float32")


def dense_gates(slots, num_tokens):
    return ref.dense_from_slots(ops.convert_to_numpy(slots.slot_token),
                               ops.convert_to_numpy(slots.slot_weight),
                               num_tokens)


def expert_weights(moe):
    experts = moe.experts
    return [ops.convert_to_numpy(w) for w in (
        experts.kernel_in, experts.bias_in, experts.kernel_out,
        experts.bias_out)]


@pytest.mark.parametrize("k, m", [(1, 3), (2, 6), (3, 9), (4, 12)])
def test_batchwise_mask_gives_every_expert_m_tokens(k, m):
    gating, w_gate, threshold = make_gating(k=k, z_loss_weight=1e-2,
                                            threshold_loss_weight=0.5)
    x = tokens()
    result = gating(x, training=True)
    assert isinstance(result, ExpertSlots)
    expected = ref.strictly_balanced(x, w_gate, threshold, k, training=True,
                                     threshold_loss_weight=0.5,
                                     z_loss_weight=1e-2)
    assert expected["m"] == m == gating.tokens_per_expert(NUM_TOKENS)
    slot_token = ops.convert_to_numpy(result.slot_token)
    assert slot_token.shape == (NUM_EXPERTS, m)
    for e in range(NUM_EXPERTS):
        # m distinct tokens: the expert's top m by G_sigma.
        assert set(slot_token[e]) == set(
            np.nonzero(expected["batchwise_mask"][:, e])[0])
        assert len(set(slot_token[e])) == m
    np.testing.assert_array_equal(ops.convert_to_numpy(result.load),
                                  np.full(NUM_EXPERTS, m))
    np.testing.assert_allclose(dense_gates(result, NUM_TOKENS),
                               expected["gates"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ops.convert_to_numpy(result.importance),
                               expected["importance"], rtol=1e-5)
    for name in (LOSS, "z_loss"):
        np.testing.assert_allclose(float(result.auxiliary_losses[name]),
                                   expected[name], rtol=1e-5, err_msg=name)
    assert len(gating.losses) == 1
    np.testing.assert_allclose(float(gating.losses[0]),
                               expected[LOSS] + expected["z_loss"],
                               rtol=1e-5)


@pytest.mark.parametrize("eval_capacity_factor", [1.0, 2.0])
def test_inference_matches_reference(eval_capacity_factor):
    gating, w_gate, threshold = make_gating(
        k=2, eval_capacity_factor=eval_capacity_factor)
    x = tokens()
    result = gating(x, training=False)
    expected = ref.strictly_balanced(x, w_gate, threshold, 2, training=False,
                                     eval_capacity_factor=eval_capacity_factor)
    assert result.slot_token.shape == (NUM_EXPERTS,
                                       expected["eval_capacity"])
    assert gating.capacity(NUM_TOKENS) == expected["eval_capacity"]
    np.testing.assert_allclose(dense_gates(result, NUM_TOKENS),
                               expected["gates"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ops.convert_to_numpy(result.load),
                                  expected["load"])
    np.testing.assert_allclose(ops.convert_to_numpy(result.importance),
                               expected["importance"], rtol=1e-5)
    np.testing.assert_allclose(float(result.auxiliary_losses[LOSS]),
                               expected[LOSS], rtol=1e-5)
    assert gating.losses == []
    # The threshold mask differs from the batchwise one here.
    assert not np.array_equal(expected["mask"], expected["batchwise_mask"])


def test_inference_uses_thresholds_set_by_hand():
    # k = 1: m = 3 and C_eval = 6 slots per expert.
    gating, w_gate, _ = make_gating(k=1, eval_capacity_factor=2.0)
    x = tokens()
    scores = ref.softmax_rows(x.astype(np.float64) @ w_gate)
    ranked = [np.argsort(-scores[:, e]) for e in range(NUM_EXPERTS)]

    def between(e, rank):
        """A threshold between the rank-th and (rank+1)-th highest scores."""
        return 0.5 * (scores[ranked[e][rank - 1], e]
                      + scores[ranked[e][rank], e])

    # Expert 0 passes everyone (6 slots cap it), expert 1 nobody, expert 2
    # its top 4, expert 3 its top 2.
    gating.threshold.assign(np.array(
        [0.0, 1.0, between(2, 4), between(3, 2)], "float32"))
    result = gating(x, training=False)
    slot_token = ops.convert_to_numpy(result.slot_token)
    filled = ops.convert_to_numpy(result.slot_weight) > 0
    np.testing.assert_array_equal(ops.convert_to_numpy(result.load),
                                  [6, 0, 4, 2])
    for e, count in enumerate([6, 0, 4, 2]):
        assert set(slot_token[e][filled[e]]) == set(ranked[e][:count])
    # Each token's weights are its G_sigma over the experts holding it,
    # normalised; tokens held by nobody get nothing.
    gates = dense_gates(result, NUM_TOKENS)
    held = gates > 0
    expected = np.where(held, scores, 0.0)
    totals = expected.sum(1, keepdims=True)
    expected = np.where(totals > 0, expected / np.maximum(totals, 1e-30), 0)
    np.testing.assert_allclose(gates, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gates.sum(1), held.any(1).astype(float),
                               rtol=1e-5)


def test_threshold_loss_gradients():
    gating, w_gate, threshold = make_gating(k=2, threshold_loss_weight=0.5)
    x = tokens()

    def loss_fn(slots, losses):
        return slots.auxiliary_losses[LOSS]

    loss, grads = value_and_gradients(gating, loss_fn, x, training=True)
    expected = ref.strictly_balanced(x, w_gate, threshold, 2, training=True,
                                     threshold_loss_weight=0.5)
    np.testing.assert_allclose(loss, expected[LOSS], rtol=1e-5)
    gradient = {path.split("/")[-1]: g for path, g in grads.items()}
    np.testing.assert_allclose(gradient["threshold"],
                               expected["threshold_gradient"], rtol=1e-6)
    assert np.abs(expected["threshold_gradient"]).max() > 0

    # The loss also trains W_g through G_sigma (masks held fixed).
    def reference_loss(w):
        return ref.strictly_balanced(x, w, threshold, 2, training=True,
                                     threshold_loss_weight=0.5)[LOSS]

    numeric = finite_difference(reference_loss, w_gate.astype(np.float64))
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(gradient["kernel"], numeric, rtol=1e-3,
                               atol=1e-5)


def finite_difference(function, w, step=1e-6):
    numeric = np.zeros_like(w)
    for index in np.ndindex(*w.shape):
        delta = np.zeros_like(w)
        delta[index] = step
        numeric[index] = (function(w + delta) - function(w - delta)) / (
            2 * step)
    return numeric


@pytest.mark.parametrize("training", [True, False])
def test_gate_gradients_reach_w_gate(training):
    gating, w_gate, threshold = make_gating(k=2, threshold_loss_weight=0.0)
    x = tokens()
    coefficients = np.random.RandomState(7).randn(
        NUM_TOKENS, NUM_EXPERTS).astype("float32")

    def loss_fn(slots, losses):
        # sum over slots of weight * coefficients[token, expert]
        per_slot = ops.take_along_axis(
            ops.transpose(coefficients), slots.slot_token, axis=1)
        return ops.sum(slots.slot_weight * per_slot)

    loss, grads = value_and_gradients(gating, loss_fn, x, training=training)

    def reference_loss(w):
        return np.sum(ref.strictly_balanced(
            x, w, threshold, 2, training=training)["gates"] * coefficients)

    np.testing.assert_allclose(loss, reference_loss(w_gate), rtol=1e-5)
    gradient = {path.split("/")[-1]: g for path, g in grads.items()}
    numeric = finite_difference(reference_loss, w_gate.astype(np.float64))
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(gradient["kernel"], numeric, rtol=1e-3,
                               atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_moe_equals_dense_reference(training):
    gating, w_gate, threshold = make_gating(k=1, eval_capacity_factor=1.0)
    moe = MixtureOfExperts(NUM_EXPERTS, 16, router=gating)
    assert moe.k == 1
    x = tokens().reshape(3, 4, DIM)
    y = ops.convert_to_numpy(moe(x, training=training)).reshape(-1, DIM)
    expected = ref.strictly_balanced(x.reshape(-1, DIM), w_gate, threshold,
                                     1, training=training,
                                     eval_capacity_factor=1.0)
    dense = ref.dense_moe(x.reshape(-1, DIM), expected["gates"],
                          numpy_reference.expert_ffn, *expert_weights(moe))
    np.testing.assert_allclose(y, dense, rtol=1e-4, atol=1e-5)
    assert expected["dropped_fraction"] > 0
    np.testing.assert_allclose(float(moe.dropped_fraction),
                               expected["dropped_fraction"], rtol=1e-6)
    np.testing.assert_allclose(float(moe.auxiliary_losses[LOSS]),
                               expected[LOSS], rtol=1e-5)


def mask_agreement(gating, x):
    """Fraction of (token, expert) pairs where the inference mask equals
    the batchwise one."""
    batchwise = dense_gates(gating(x, training=True), len(x)) > 0
    inference = dense_gates(gating(x, training=False), len(x)) > 0
    return np.mean(batchwise == inference)


def test_thresholds_learn_the_batchwise_mask():
    inputs = keras.Input((5, DIM))
    gating = StrictlyBalancedRouter(NUM_EXPERTS, k=1, seed=2)
    hidden = inputs + MixtureOfExperts(NUM_EXPERTS, 16, router=gating)(
        inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.RandomState(0)
    x = rng.randn(8, 5, DIM).astype("float32")
    y = np.tanh(x[..., :2]).sum(-1, keepdims=True)
    flat = x.reshape(-1, DIM)  # 40 tokens, m = 10, C_eval = 20
    before = mask_agreement(gating, flat)
    # T = 0 passes every token: each expert keeps 20 at inference, not 10.
    np.testing.assert_allclose(before, 1 - 10 / 40)
    model.fit(x, y, batch_size=8, epochs=80, verbose=0)
    after = mask_agreement(gating, flat)
    assert after > before + 0.1 and after > 0.9
    assert np.all(ops.convert_to_numpy(gating.threshold) > 0.05)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="only TensorFlow traces an unknown token count")
@pytest.mark.parametrize("training", [True, False])
def test_unknown_token_count_compiles_with_xla(training):
    import tensorflow as tf

    gating, _, _ = make_gating(k=1)
    moe = MixtureOfExperts(NUM_EXPERTS, 16, router=gating)
    x = tokens(num_tokens=20)

    @tf.function(jit_compile=True,
                 input_signature=[tf.TensorSpec((None, DIM), tf.float32)])
    def compiled(inputs):
        slots = gating(inputs, training=training)
        return moe(inputs, training=training), slots.slot_token

    for num_tokens in (20, 7):
        y, slot_token = compiled(x[:num_tokens])
        assert slot_token.shape == (
            NUM_EXPERTS, gating.capacity(num_tokens, training))
        np.testing.assert_allclose(
            y.numpy(), ops.convert_to_numpy(moe(x[:num_tokens],
                                                training=training)),
            rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    gating = StrictlyBalancedRouter(
        NUM_EXPERTS, k=3, eval_capacity_factor=1.5, threshold_loss_weight=0.2,
        z_loss_weight=1e-3, threshold_initializer="ones",
        kernel_initializer="zeros", seed=4)
    config = gating.get_config()
    assert config["k"] == 3 and gating.k == 3
    clone = StrictlyBalancedRouter.from_config(config)
    assert clone.get_config() == config
    clone.build((None, DIM))
    np.testing.assert_array_equal(ops.convert_to_numpy(clone.threshold),
                                  np.ones(NUM_EXPERTS))


def test_computes_in_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    gating, w_gate, threshold = make_gating(k=2)
    x = ops.cast(tokens(), "bfloat16")
    result = gating(x, training=True)
    assert gating.kernel.dtype == "float32"
    assert gating.threshold.dtype == "float32"
    assert result.slot_weight.dtype == "float32"
    # Only the input is rounded: W_g and T are read in float32.
    expected = ref.strictly_balanced(
        ops.convert_to_numpy(ops.cast(x, "float32")), w_gate, threshold, 2,
        training=True)
    np.testing.assert_allclose(dense_gates(result, NUM_TOKENS),
                               expected["gates"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(result.auxiliary_losses[LOSS]),
                               expected[LOSS], rtol=1e-5)
