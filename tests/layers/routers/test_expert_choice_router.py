"""ExpertChoiceRouter against NumPy; expert-choice routing inside the MoE."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import MixtureOfExperts
from sgmoe.layers.routers.expert_choice_router import ExpertChoiceRouter
from sgmoe.layers.routers.routing_result import ExpertSlots
from tests.helpers import value_and_gradients
from tests.layers import numpy_reference
from tests.layers import slot_routing_reference as ref

NUM_TOKENS, DIM, NUM_EXPERTS = 12, 8, 4


def make_router(**kwargs):
    router = ExpertChoiceRouter(NUM_EXPERTS, **kwargs)
    router.build((None, DIM))
    w_gate = np.random.RandomState(0).randn(DIM, NUM_EXPERTS).astype(
        "float32")
    router.kernel.assign(w_gate)
    return router, w_gate


def tokens(seed=1, num_tokens=NUM_TOKENS):
    return np.random.RandomState(seed).randn(num_tokens, DIM).astype(
        "float32")


def numpy_slots(slots):
    return {name: ops.convert_to_numpy(getattr(slots, name)) for name in (
        "slot_token", "slot_weight", "importance", "load")}


def expert_weights(moe):
    experts = moe.experts
    return [ops.convert_to_numpy(w) for w in (
        experts.kernel_in, experts.bias_in, experts.kernel_out,
        experts.bias_out)]


@pytest.mark.parametrize("capacity_factor, capacity", [
    (2.0, 6), (1.0, 3), (0.1, 1), (10.0, NUM_TOKENS)])
def test_matches_reference(capacity_factor, capacity):
    router, w_gate = make_router(capacity_factor=capacity_factor,
                                 z_loss_weight=1e-2)
    x = tokens()
    result = router(x, training=True)
    assert isinstance(result, ExpertSlots)
    expected = ref.expert_choice(x, w_gate, capacity_factor, 1e-2)
    assert expected["capacity"] == capacity == router.capacity(NUM_TOKENS)
    got = numpy_slots(result)
    # top_k orders each expert's tokens by score, as the reference does
    # (random scores have no ties).
    np.testing.assert_array_equal(got["slot_token"], expected["slot_token"])
    np.testing.assert_allclose(got["slot_weight"], expected["slot_weight"],
                               rtol=1e-5)
    np.testing.assert_allclose(got["importance"], expected["importance"],
                               rtol=1e-5)
    np.testing.assert_array_equal(got["load"], expected["load"])
    np.testing.assert_allclose(float(result.auxiliary_losses["z_loss"]),
                               expected["z_loss"], rtol=1e-5)
    assert len(router.losses) == 1
    np.testing.assert_allclose(float(router.losses[0]), expected["z_loss"],
                               rtol=1e-5)


def test_no_losses_without_z_loss():
    router, _ = make_router()
    result = router(tokens(), training=True)
    assert result.auxiliary_losses == {} and router.losses == []
    router, _ = make_router(z_loss_weight=1e-3)
    assert "z_loss" in router(tokens(), training=False).auxiliary_losses
    assert router.losses == []


def test_output_spec():
    router = ExpertChoiceRouter(NUM_EXPERTS, capacity_factor=1.0,
                                z_loss_weight=1e-3)
    spec = router.compute_output_spec(keras.KerasTensor((NUM_TOKENS, DIM)))
    assert tuple(spec.slot_token.shape) == (NUM_EXPERTS, 3)
    assert spec.slot_token.dtype == "int32"
    assert tuple(spec.slot_weight.shape) == (NUM_EXPERTS, 3)
    assert sorted(spec.auxiliary_losses) == ["z_loss"]
    unknown = router.compute_output_spec(keras.KerasTensor((None, DIM)))
    assert tuple(unknown.slot_token.shape) == (NUM_EXPERTS, None)


@pytest.mark.parametrize("capacity_factor", [1.0, 2.0])
def test_moe_equals_dense_reference(capacity_factor):
    router, w_gate = make_router(capacity_factor=capacity_factor)
    moe = MixtureOfExperts(NUM_EXPERTS, 16, router=router)
    assert moe.k is None
    x = tokens().reshape(3, 4, DIM)
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    expected = ref.expert_choice(x.reshape(-1, DIM), w_gate, capacity_factor)
    dense = ref.dense_moe(x.reshape(-1, DIM), expected["gates"],
                          numpy_reference.expert_ffn, *expert_weights(moe))
    np.testing.assert_allclose(y, dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(moe.dropped_fraction),
                               expected["dropped_fraction"], rtol=1e-6)
    if capacity_factor == 1.0:
        # With one slot per token on average, some token goes unchosen.
        assert expected["dropped_fraction"] > 0
    np.testing.assert_allclose(ops.convert_to_numpy(moe.expert_load),
                               expected["load"])


def test_gradients_reach_w_gate():
    router, w_gate = make_router(capacity_factor=1.0)
    x = tokens()
    coefficients = np.random.RandomState(5).randn(
        NUM_EXPERTS, 3).astype("float32")

    def loss_fn(slots, losses):
        return ops.sum(slots.slot_weight * coefficients)

    loss, grads = value_and_gradients(router, loss_fn, x, training=True)

    def reference_loss(w):
        return np.sum(ref.expert_choice(x, w, 1.0)["slot_weight"]
                      * coefficients)

    # Central differences, with the choice of tokens fixed for small steps.
    w64 = w_gate.astype(np.float64)
    numeric = np.zeros_like(w64)
    for index in np.ndindex(*w64.shape):
        step = np.zeros_like(w64)
        step[index] = 1e-6
        numeric[index] = (reference_loss(w64 + step)
                          - reference_loss(w64 - step)) / 2e-6
    np.testing.assert_allclose(loss, reference_loss(w64), rtol=1e-5)
    (gradient,) = grads.values()
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(gradient, numeric, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="only TensorFlow traces an unknown token count")
def test_unknown_token_count_compiles_with_xla():
    import tensorflow as tf

    router, _ = make_router(capacity_factor=1.0)
    moe = MixtureOfExperts(NUM_EXPERTS, 16, router=router)
    x = tokens(num_tokens=20)

    @tf.function(jit_compile=True,
                 input_signature=[tf.TensorSpec((None, DIM), tf.float32)])
    def compiled(inputs):
        slots = router(inputs)
        return moe(inputs), slots.slot_token

    for num_tokens in (20, 7):
        y, slot_token = compiled(x[:num_tokens])
        assert slot_token.shape == (NUM_EXPERTS,
                                    router.capacity(num_tokens))
        np.testing.assert_allclose(
            y.numpy(), ops.convert_to_numpy(moe(x[:num_tokens])),
            rtol=1e-5, atol=1e-6)


def test_computes_in_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    router, w_gate = make_router()
    x = ops.cast(tokens(), "bfloat16")
    result = router(x)
    assert router.kernel.dtype == "float32"
    assert result.slot_token.dtype == "int32"
    assert result.slot_weight.dtype == "float32"
    # Only the input is rounded: W_g is read in float32.
    expected = ref.expert_choice(ops.convert_to_numpy(ops.cast(x, "float32")),
                                 w_gate, 2.0)
    np.testing.assert_allclose(ops.convert_to_numpy(result.slot_weight),
                               expected["slot_weight"], rtol=1e-5)
