"""Sparse dispatch: slot assignment, capacity and combine against NumPy."""

import numpy as np
import pytest
from keras import ops

from sgmoe.layers import dispatch
from tests.layers import numpy_reference as ref


def random_routing(num_tokens, k, num_experts, seed=0, skew=0.0):
    """Distinct expert choices per token; `skew` > 0 crowds low experts."""
    rng = np.random.RandomState(seed)
    probs = np.exp(-skew * np.arange(num_experts))
    probs /= probs.sum()
    indices = np.stack([rng.choice(num_experts, k, replace=False, p=probs)
                        for _ in range(num_tokens)]).astype("int32")
    weights = rng.rand(num_tokens, k).astype("float32")
    return indices, weights


@pytest.mark.parametrize("num_tokens, k, num_experts, capacity_factor", [
    (12, 2, 4, 1.0), (12, 1, 4, 0.5), (30, 3, 5, 0.8), (9, 2, 8, 4.0)])
def test_capacity_and_slots_match_reference(num_tokens, k, num_experts,
                                            capacity_factor):
    indices, weights = random_routing(num_tokens, k, num_experts, skew=0.7)
    capacity = dispatch.expert_capacity(num_tokens, num_experts, k,
                                        capacity_factor)
    assert capacity == max(1, min(num_tokens, int(np.ceil(
        capacity_factor * num_tokens * k / num_experts))))
    plan = dispatch.plan_dispatch(ops.convert_to_tensor(indices), num_experts,
                                  capacity)
    kept = ops.convert_to_numpy(plan.assignment_kept)
    np.testing.assert_array_equal(
        kept, ref.capacity_kept(indices, num_experts, capacity))

    # Every kept assignment has its own slot in its expert's row, and that
    # slot holds its token.
    slots = ops.convert_to_numpy(plan.assignment_slot)
    slot_token = ops.convert_to_numpy(plan.slot_token).ravel()
    filled = ops.convert_to_numpy(plan.slot_filled).ravel()
    kept_slots = slots[kept]
    assert len(set(kept_slots.tolist())) == kept.sum()
    np.testing.assert_array_equal(kept_slots // capacity, indices[kept])
    token_of_assignment = np.repeat(np.arange(num_tokens)[:, None], k, 1)
    np.testing.assert_array_equal(slot_token[kept_slots],
                                  token_of_assignment[kept])
    assert filled[kept_slots].all() and filled.sum() == kept.sum()

    # Dispatch then combine with identity experts: each token gets back the
    # weighted sum of its kept gates times itself.
    x = np.random.RandomState(1).randn(num_tokens, 6).astype("float32")
    buffer = dispatch.dispatch(ops.convert_to_tensor(x), plan)
    assert tuple(buffer.shape) == (num_experts, capacity, 6)
    buffer_np = ops.convert_to_numpy(buffer).reshape(-1, 6)
    np.testing.assert_array_equal(buffer_np[~filled], 0.0)
    y = ops.convert_to_numpy(dispatch.combine(buffer, plan, weights))
    expected = (weights * kept).sum(1, keepdims=True) * x
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_first_choices_outrank_second_choices():
    # Three tokens all want expert 0: token 2 as first choice, tokens 0 and 1
    # as second choice. With one slot, token 2 gets it.
    indices = np.array([[1, 0], [2, 0], [0, 1]], dtype="int32")
    plan = dispatch.plan_dispatch(ops.convert_to_tensor(indices), 3, 1)
    kept = ops.convert_to_numpy(plan.assignment_kept)
    np.testing.assert_array_equal(kept, [[True, False], [True, False],
                                         [True, False]])


def test_buffer_grows_with_tokens_times_k_not_experts():
    for num_experts in (4, 64, 512):
        indices, _ = random_routing(64, 2, num_experts, seed=num_experts)
        capacity = dispatch.expert_capacity(64, num_experts, 2, 1.0)
        plan = dispatch.plan_dispatch(ops.convert_to_tensor(indices),
                                      num_experts, capacity)
        # Slots = E * ceil(T * k / E) <= T * k + E.
        assert np.prod(plan.slot_token.shape) <= 64 * 2 + num_experts


def test_rejects_non_positive_capacity_factor():
    with pytest.raises(ValueError, match="`capacity_factor`"):
        dispatch.expert_capacity(8, 4, 2, 0.0)
