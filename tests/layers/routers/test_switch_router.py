"""SwitchRouter and the router z-loss against NumPy; routers inside the MoE."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import NoisyTopKRouter
from sgmoe.layers import SwitchRouter
from sgmoe.layers._random import uniform
from tests.layers import numpy_reference as ref

NUM_TOKENS, DIM, NUM_EXPERTS = 12, 8, 4


def numpy_switch(x, kernel, alpha, z_weight):
    logits = x.astype(np.float64) @ kernel
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    chosen = probs.argmax(1)
    gate = probs[np.arange(len(x)), chosen]
    counts = np.bincount(chosen, minlength=kernel.shape[1])
    f = counts / len(x)
    p = probs.mean(0)
    lse = np.log(np.exp(logits).sum(1))
    return {
        "indices": chosen[:, None], "gates": gate[:, None],
        "load": counts, "importance": np.bincount(
            chosen, weights=gate, minlength=kernel.shape[1]),
        "load_balancing_loss": alpha * kernel.shape[1] * (f * p).sum(),
        "z_loss": z_weight * np.mean(lse ** 2),
    }


def make_router(**kwargs):
    router = SwitchRouter(NUM_EXPERTS, **kwargs)
    router.build((None, DIM))
    kernel = np.random.RandomState(0).randn(DIM, NUM_EXPERTS).astype(
        "float32")
    router.kernel.assign(kernel)
    return router, kernel


def tokens(seed=1):
    return np.random.RandomState(seed).randn(NUM_TOKENS, DIM).astype(
        "float32")


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_switch_matches_reference(jitter):
    router, kernel = make_router(load_balancing_weight=0.01,
                                 z_loss_weight=1e-3, jitter=jitter, seed=3)
    x = tokens()
    result = router(x, training=True)
    jittered = x
    if jitter:
        # The first uniform draw of a fresh generator with the same seed.
        jittered = x * ops.convert_to_numpy(uniform(
            x.shape, 1 - jitter, 1 + jitter, keras.random.SeedGenerator(3)))
        assert not np.allclose(jittered, x)
    expected = numpy_switch(jittered, kernel, 0.01, 1e-3)
    np.testing.assert_array_equal(ops.convert_to_numpy(result.expert_indices),
                                  expected["indices"])
    np.testing.assert_allclose(ops.convert_to_numpy(result.expert_weights),
                               expected["gates"], rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(result.load),
                               expected["load"])
    np.testing.assert_allclose(ops.convert_to_numpy(result.importance),
                               expected["importance"], rtol=1e-5)
    for name in ("load_balancing_loss", "z_loss"):
        np.testing.assert_allclose(float(result.auxiliary_losses[name]),
                                   expected[name], rtol=1e-5, err_msg=name)
    assert len(router.losses) == 1
    np.testing.assert_allclose(
        float(router.losses[0]),
        expected["load_balancing_loss"] + expected["z_loss"], rtol=1e-5)


def test_balancing_loss_is_alpha_when_uniform():
    router = SwitchRouter(NUM_EXPERTS, load_balancing_weight=0.5)
    router.build((None, DIM))
    # One token per expert: row i of the identity picks expert i, and a tiny
    # kernel makes every probability 1 / E (to 1e-6).
    x = np.eye(NUM_EXPERTS, DIM, dtype="float32")
    router.kernel.assign(np.eye(DIM, NUM_EXPERTS, dtype="float32") * 1e-6)
    result = router(x, training=False)
    np.testing.assert_array_equal(ops.convert_to_numpy(result.load),
                                  np.ones(NUM_EXPERTS))
    np.testing.assert_allclose(
        float(result.auxiliary_losses["load_balancing_loss"]), 0.5, rtol=1e-5)
    assert router.losses == []


def test_z_loss_on_noisy_top_k_gating():
    gating = NoisyTopKRouter(NUM_EXPERTS, k=2, noisy=False,
                             z_loss_weight=0.01)
    gating.build((None, DIM))
    w_gate = np.random.RandomState(2).randn(DIM, NUM_EXPERTS).astype(
        "float32")
    gating.kernel.assign(w_gate)
    x = tokens()
    result = gating(x, training=True)
    logits = x.astype(np.float64) @ w_gate
    expected_z = 0.01 * np.mean(np.log(np.exp(logits).sum(1)) ** 2)
    np.testing.assert_allclose(float(result.auxiliary_losses["z_loss"]),
                               expected_z, rtol=1e-5)
    reference = ref.noisy_top_k_gating(x, w_gate, None, 2)
    np.testing.assert_allclose(
        float(gating.losses[0]),
        reference["importance_loss"] + reference["load_loss"] + expected_z,
        rtol=1e-4)
    assert "z_loss" not in NoisyTopKRouter(4, k=2)(x).auxiliary_losses


def test_moe_with_switch_router_equals_dense_reference():
    router, kernel = make_router()
    moe = MixtureOfExperts(NUM_EXPERTS, 16, capacity_factor=4.0,
                           router=router)
    assert moe.k == 1
    x = tokens().reshape(3, 4, DIM)
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    expected = numpy_switch(x.reshape(-1, DIM), kernel, 0.01, 0.0)
    experts = moe.experts
    dense = ref.dense_mixture(
        x.reshape(-1, DIM), expected["indices"], expected["gates"],
        *(ops.convert_to_numpy(w) for w in (
            experts.kernel_in, experts.bias_in, experts.kernel_out,
            experts.bias_out)))
    np.testing.assert_allclose(y, dense, rtol=1e-4, atol=1e-5)


def test_moe_rejects_a_router_for_other_experts():
    with pytest.raises(ValueError, match="`router`.s num_experts"):
        MixtureOfExperts(8, 16, router=SwitchRouter(4))
    with pytest.raises(ValueError, match="noisy_top_k', .*'switch'"):
        MixtureOfExperts(4, 16, router="top_2")


def test_routers_by_name():
    moe = MixtureOfExperts(4, 16, router="switch", seed=2)
    assert isinstance(moe.router, SwitchRouter) and moe.k == 1
    assert moe.get_config()["router"]["class_name"] == "SwitchRouter"
    clone = MixtureOfExperts.from_config(moe.get_config())
    assert isinstance(clone.router, SwitchRouter) and clone.router.seed == 2
    default = MixtureOfExperts(4, 16, k=2)
    assert isinstance(default.router, NoisyTopKRouter)
    assert default.get_config()["router"]["class_name"] == "NoisyTopKRouter"
    assert isinstance(MixtureOfExperts(4, 16, router=None).router,
                      NoisyTopKRouter)
