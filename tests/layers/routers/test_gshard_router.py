"""GShardRouter against a NumPy transcription of GShard; inside the MoE."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import MixtureOfExperts
from sgmoe.layers._random import uniform
from sgmoe.layers.routers.gshard_router import GShardRouter
from tests import helpers
from tests.layers import numpy_reference as ref

NUM_TOKENS, DIM, HIDDEN, NUM_EXPERTS = 12, 8, 16, 4
SEED = 3


def numpy_gshard(x, kernel, token_groups=1, policy="all", threshold=0.2,
                 uniforms=None, alpha=0.01, z_weight=0.0):
    """GShard top-2 (arXiv:2006.16668, Algorithm 1), token by token.

    `uniforms` [N] are the random routing draws of the "random" policy.
    """
    logits = x.astype(np.float64) @ kernel.astype(np.float64)
    num_tokens, num_experts = logits.shape
    probs = np.zeros((num_tokens, num_experts))
    indices = np.zeros((num_tokens, 2), dtype=np.int64)
    gates = np.zeros((num_tokens, 2))
    importance = np.zeros(num_experts)
    load = np.zeros(num_experts)
    for n in range(num_tokens):
        probs[n] = ref.softmax(logits[n])
        first = int(np.argmax(probs[n]))
        rest = probs[n].copy()
        rest[first] = -np.inf
        second = int(np.argmax(rest))
        g1, g2 = probs[n, first], probs[n, second]
        g1, g2 = g1 / (g1 + g2), g2 / (g1 + g2)
        keep = {"all": lambda: True,
                "none": lambda: False,
                "threshold": lambda: g2 > threshold,
                "random": lambda: uniforms[n] < g2 / threshold}[policy]()
        indices[n] = first, (second if keep else num_experts)
        gates[n] = g1, (g2 if keep else 0.0)
        importance[first] += g1
        load[first] += 1
        if keep:
            importance[second] += g2
            load[second] += 1
    group_size = num_tokens // token_groups
    group_losses = []
    for g in range(token_groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        f = np.bincount(indices[rows, 0], minlength=num_experts) / group_size
        m = probs[rows].mean(0)
        group_losses.append(num_experts ** 2 * np.mean(f * m))
    lse = np.log(np.exp(logits).sum(1))
    return {
        "indices": indices, "gates": gates, "importance": importance,
        "load": load,
        "load_balancing_loss": alpha * np.mean(group_losses),
        "z_loss": z_weight * np.mean(lse ** 2),
    }


def kernel_values(seed=0):
    return np.random.RandomState(seed).randn(DIM, NUM_EXPERTS).astype(
        "float32")


def make_router(**kwargs):
    kwargs.setdefault("seed", SEED)
    router = GShardRouter(NUM_EXPERTS, **kwargs)
    router.build((None, DIM))
    kernel = kernel_values()
    router.kernel.assign(kernel)
    return router, kernel


def tokens(seed=1, num_tokens=NUM_TOKENS):
    return np.random.RandomState(seed).randn(num_tokens, DIM).astype(
        "float32")


def first_uniforms(num_tokens, seed=SEED):
    """The first draw of a fresh generator: the router's first routing."""
    return ops.convert_to_numpy(uniform((num_tokens,), 0.0, 1.0,
                                        keras.random.SeedGenerator(seed)))


def assert_matches(result, expected):
    np.testing.assert_array_equal(ops.convert_to_numpy(result.expert_indices),
                                  expected["indices"])
    np.testing.assert_allclose(ops.convert_to_numpy(result.expert_weights),
                               expected["gates"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ops.convert_to_numpy(result.load),
                               expected["load"])
    np.testing.assert_allclose(ops.convert_to_numpy(result.importance),
                               expected["importance"], rtol=1e-5)
    np.testing.assert_allclose(
        float(result.auxiliary_losses["load_balancing_loss"]),
        expected["load_balancing_loss"], rtol=1e-5)


@pytest.mark.parametrize("token_groups", [1, 2, 3])
@pytest.mark.parametrize("policy", ["all", "none", "threshold", "random"])
def test_router_matches_reference(policy, token_groups):
    router, kernel = make_router(token_groups=token_groups,
                                 second_expert_policy=policy,
                                 load_balancing_weight=0.5,
                                 z_loss_weight=1e-3)
    x = tokens()
    result = router(x, training=True)
    expected = numpy_gshard(x, kernel, token_groups, policy,
                            uniforms=first_uniforms(NUM_TOKENS), alpha=0.5,
                            z_weight=1e-3)
    assert_matches(result, expected)
    np.testing.assert_allclose(float(result.auxiliary_losses["z_loss"]),
                               expected["z_loss"], rtol=1e-5)
    assert len(router.losses) == 1
    np.testing.assert_allclose(
        float(router.losses[0]),
        expected["load_balancing_loss"] + expected["z_loss"], rtol=1e-5)
    skipped = expected["indices"][:, 1] == NUM_EXPERTS
    if policy in ("threshold", "random"):
        # These tokens exercise both outcomes.
        assert skipped.any() and not skipped.all()


def test_group_losses_differ_from_one_global_group():
    router, kernel = make_router(token_groups=3, load_balancing_weight=1.0)
    x = tokens()
    grouped = float(router(x).auxiliary_losses["load_balancing_loss"])
    global_loss = numpy_gshard(x, kernel, 1, alpha=1.0)["load_balancing_loss"]
    assert abs(grouped - global_loss) > 1e-3


def test_balancing_loss_is_the_weight_when_uniform():
    router = GShardRouter(NUM_EXPERTS, token_groups=2,
                          load_balancing_weight=0.5)
    router.build((None, DIM))
    router.kernel.assign(np.eye(DIM, NUM_EXPERTS, dtype="float32") * 1e-6)
    # Each group of 4 tokens sends one token to each expert.
    x = np.concatenate([np.eye(NUM_EXPERTS, DIM, dtype="float32")] * 2)
    result = router(x, training=False)
    np.testing.assert_allclose(
        float(result.auxiliary_losses["load_balancing_loss"]), 0.5,
        rtol=1e-5)
    assert router.losses == []


def test_eval_policy_applies_outside_training():
    router, kernel = make_router(second_expert_policy="none",
                                 eval_second_expert_policy="threshold",
                                 second_expert_threshold=0.3)
    x = tokens()
    assert_matches(router(x, training=False),
                   numpy_gshard(x, kernel, policy="threshold", threshold=0.3))
    assert router.losses == []
    assert_matches(router(x, training=True),
                   numpy_gshard(x, kernel, policy="none"))


def test_random_routing_keeps_second_expert_with_gate_over_threshold():
    distinct, copies = 16, 500
    router, kernel = make_router(second_expert_policy="random",
                                 second_expert_threshold=0.2)
    # Scaled tokens spread the normalised second gates over (0, 0.5].
    x = np.tile(0.5 * tokens(num_tokens=distinct), (copies, 1))
    expected = numpy_gshard(x[:distinct], kernel, policy="all")
    second_gate = expected["gates"][:, 1]
    keep_probability = np.minimum(1.0, second_gate / 0.2)
    assert (keep_probability < 0.5).any() and (keep_probability == 1).any()

    result = router(x, training=True)
    indices = ops.convert_to_numpy(result.expert_indices).reshape(
        copies, distinct, 2)
    weights = ops.convert_to_numpy(result.expert_weights).reshape(
        copies, distinct, 2)
    # First choices are never skipped.
    np.testing.assert_array_equal(
        indices[..., 0], np.broadcast_to(expected["indices"][:, 0],
                                         (copies, distinct)))
    np.testing.assert_allclose(
        weights[..., 0], np.broadcast_to(expected["gates"][:, 0],
                                         (copies, distinct)), rtol=1e-5)
    kept = indices[..., 1] != NUM_EXPERTS
    # Kept seconds are the reference's; skipped ones are (E, 0).
    np.testing.assert_array_equal(
        indices[..., 1][kept],
        np.broadcast_to(expected["indices"][:, 1], kept.shape)[kept])
    np.testing.assert_allclose(
        weights[..., 1][kept],
        np.broadcast_to(second_gate, kept.shape)[kept], rtol=1e-5)
    np.testing.assert_array_equal(weights[..., 1][~kept], 0.0)
    # Keep frequency per token: binomial std <= 0.5 / sqrt(500) = 0.022.
    np.testing.assert_allclose(kept.mean(0), keep_probability, atol=0.09)
    np.testing.assert_array_equal(kept[:, keep_probability == 1], True)
    total_std = np.sqrt(copies * np.sum(
        keep_probability * (1 - keep_probability)))
    assert abs(kept.sum() - copies * keep_probability.sum()) < 4 * total_std
    np.testing.assert_allclose(ops.convert_to_numpy(result.load).sum(),
                               copies * distinct + kept.sum())
    # The next call draws again.
    again = ops.convert_to_numpy(router(x, training=True).expert_indices)
    assert not np.array_equal(again, indices.reshape(-1, 2))


def test_default_inference_is_deterministic_top_2():
    router, kernel = make_router()
    assert router.second_expert_policy == "random"
    x = tokens()
    first = router(x, training=False)
    second = router(x, training=False)
    np.testing.assert_array_equal(ops.convert_to_numpy(first.expert_indices),
                                  ops.convert_to_numpy(second.expert_indices))
    assert_matches(first, numpy_gshard(x, kernel, policy="all"))


def build_moe(router_kwargs, **moe_kwargs):
    """A built MoE with a GShardRouter, a fixed kernel and non-zero biases."""
    router = GShardRouter(NUM_EXPERTS, seed=SEED, **router_kwargs)
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, router=router, **moe_kwargs)
    moe.build((None, DIM))
    router.kernel.assign(kernel_values())
    rng = np.random.RandomState(5)
    moe.experts.bias_in.assign(
        0.1 * rng.randn(NUM_EXPERTS, HIDDEN).astype("float32"))
    moe.experts.bias_out.assign(
        0.1 * rng.randn(NUM_EXPERTS, DIM).astype("float32"))
    return moe


def moe_reference(moe, x, routing, capacity, token_groups):
    """Dense NumPy MoE of a reference routing with group-local capacity."""
    indices = routing["indices"]
    kept = ref.capacity_kept(indices, NUM_EXPERTS, capacity, token_groups)
    experts = moe.experts
    y = ref.dense_mixture(x, indices, routing["gates"], *(
        ops.convert_to_numpy(w) for w in (
            experts.kernel_in, experts.bias_in, experts.kernel_out,
            experts.bias_out)), kept=kept)
    dropped = 1.0 - kept.sum() / (indices < NUM_EXPERTS).sum()
    return y, kept, dropped


@pytest.mark.parametrize("training", [False, True])
def test_moe_with_large_capacity_equals_dense_mixture(training):
    moe = build_moe(dict(token_groups=2), capacity_factor=4.0)
    assert moe.k == 2
    x = tokens(num_tokens=24)
    y = ops.convert_to_numpy(moe(x.reshape(4, 6, DIM), training=training))
    routing = numpy_gshard(x, kernel_values(), 2,
                           "random" if training else "all",
                           uniforms=first_uniforms(24))
    # Capacity min(S, ...) = S = 12: only skipped second experts are absent.
    expected, kept, dropped = moe_reference(moe, x, routing, 12, 2)
    np.testing.assert_array_equal(kept, routing["indices"] < NUM_EXPERTS)
    assert dropped == 0.0 and float(moe.dropped_fraction) == 0.0
    np.testing.assert_allclose(y.reshape(-1, DIM), expected, rtol=1e-4,
                               atol=1e-5)


def test_moe_drops_per_group_with_small_capacity():
    moe = build_moe(dict(token_groups=2), capacity_factor=0.5)
    x = tokens(num_tokens=24)
    y = ops.convert_to_numpy(moe(x, training=True))
    routing = numpy_gshard(x, kernel_values(), 2, "random",
                           uniforms=first_uniforms(24))
    # ceil(0.5 * 12 tokens per group * 2 / 4 experts) = 3 slots per group.
    expected, kept, dropped = moe_reference(moe, x, routing, 3, 2)
    assert (routing["indices"][:, 1] == NUM_EXPERTS).any()
    assert not np.array_equal(
        kept, ref.capacity_kept(routing["indices"], NUM_EXPERTS, 6, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(moe.dropped_fraction), dropped,
                               rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(moe.expert_load),
                               routing["load"])


def test_min_capacity_and_eval_capacity_factor_apply_per_group():
    moe = build_moe(dict(token_groups=2, second_expert_policy="all"),
                    capacity_factor=0.5, eval_capacity_factor=1.0,
                    min_capacity=4)
    x = tokens(num_tokens=24)
    routing = numpy_gshard(x, kernel_values(), 2, "all")
    # Per group of 12: training max(4, ceil(0.5*12*2/4) = 3) = 4 slots,
    # inference max(4, ceil(1.0*12*2/4)) = 6 slots.
    for training, capacity in [(True, 4), (False, 6)]:
        y = ops.convert_to_numpy(moe(x, training=training))
        expected, kept, dropped = moe_reference(moe, x, routing, capacity, 2)
        assert 0.0 < dropped
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(moe.dropped_fraction), dropped,
                                   rtol=1e-6)
    # min_capacity = S keeps every assignment in both modes.
    moe.min_capacity = 12
    for training in (True, False):
        y = ops.convert_to_numpy(moe(x, training=training))
        expected, _, _ = moe_reference(moe, x, routing, 12, 2)
        assert float(moe.dropped_fraction) == 0.0
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def numpy_objective(x, kernel, coefficients, part):
    expected = numpy_gshard(x, kernel, policy="threshold", alpha=1.0,
                            z_weight=0.01)
    if part == "gates":
        return np.sum(expected["gates"] * coefficients)
    return expected["load_balancing_loss"] + expected["z_loss"]


@pytest.mark.parametrize("part", ["gates", "losses"])
def test_gradients_reach_the_kernel(part):
    router, kernel = make_router(second_expert_policy="threshold",
                                 load_balancing_weight=1.0,
                                 z_loss_weight=0.01)
    x = tokens()
    coefficients = np.random.RandomState(4).randn(NUM_TOKENS, 2).astype(
        "float32")

    def loss_fn(outputs, losses):
        if part == "gates":
            return ops.sum(outputs.expert_weights * coefficients)
        return sum(losses)

    loss, grads = helpers.value_and_gradients(router, loss_fn, x,
                                              training=True)
    np.testing.assert_allclose(
        loss, numpy_objective(x, kernel, coefficients, part), rtol=1e-5)
    # Central differences of the float64 reference (routing decisions stay
    # fixed for so small a step).
    step = 1e-6
    numeric = np.zeros(kernel.shape)
    for i in np.ndindex(*kernel.shape):
        delta = np.zeros(kernel.shape)
        delta[i] = step
        numeric[i] = (
            numpy_objective(x, kernel + delta, coefficients, part)
            - numpy_objective(x, kernel - delta, coefficients, part)
        ) / (2 * step)
    gradient = grads[router.kernel.path]
    assert np.abs(gradient).max() > 1e-3
    np.testing.assert_allclose(gradient, numeric, rtol=1e-3, atol=1e-5)


def test_moe_output_gradient_reaches_the_router_kernel():
    moe = build_moe(dict(token_groups=2), capacity_factor=0.5)
    x = tokens(num_tokens=24)
    _, grads = helpers.value_and_gradients(
        moe, lambda y, losses: ops.sum(ops.square(y)), x, training=True)
    assert np.abs(grads[moe.router.kernel.path]).max() > 1e-4


def test_config_round_trip_and_default_kernel_scale():
    router = GShardRouter(NUM_EXPERTS, token_groups=3,
                          load_balancing_weight=0.1,
                          second_expert_policy="threshold",
                          eval_second_expert_policy="none",
                          second_expert_threshold=0.4, z_loss_weight=1e-3,
                          kernel_initializer="zeros", seed=7)
    config = router.get_config()
    assert GShardRouter.from_config(config).get_config() == config
    router.build((None, DIM))
    assert not np.any(ops.convert_to_numpy(router.kernel))
    default = GShardRouter(NUM_EXPERTS, seed=1)
    default.build((None, 64))
    kernel = ops.convert_to_numpy(default.kernel)
    stddev = (0.1 / 64) ** 0.5
    assert np.abs(kernel).max() <= 2 * stddev + 1e-7 and kernel.std() > 0


def test_policy_error_lists_the_policies():
    with pytest.raises(ValueError, match="'all', 'random', 'threshold'"):
        GShardRouter(4, second_expert_policy="top2")


def test_tokens_not_divisible_by_groups_name_token_groups():
    router = GShardRouter(NUM_EXPERTS, token_groups=5)
    with pytest.raises(ValueError, match="`token_groups`"):
        router(tokens())
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN,
                           router=GShardRouter(NUM_EXPERTS, token_groups=5))
    with pytest.raises(ValueError, match="token_groups"):
        moe(tokens())
