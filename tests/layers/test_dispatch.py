"""Sparse dispatch: slot assignment, capacity, groups, dropless and expert
choice against NumPy."""

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
    weights = (rng.rand(num_tokens, k) + 0.1).astype("float32")
    return indices, weights


def numpy_plan(plan):
    return {name: (None if value is None else ops.convert_to_numpy(value))
            for name, value in plan._asdict().items()
            if name != "overflow"}


def check_expert_counts(plan, indices, kept, num_experts):
    """Per expert: its kept assignments were dispatched, the rest dropped
    (indices outside [0, E) are neither)."""
    p = numpy_plan(plan)
    valid = (indices >= 0) & (indices < num_experts)
    dispatched = np.bincount(indices[kept], minlength=num_experts)
    dropped = np.bincount(indices[valid & ~kept], minlength=num_experts)
    np.testing.assert_array_equal(p["expert_dispatched"], dispatched)
    np.testing.assert_array_equal(p["expert_dropped"], dropped)


def check_round_trip(plan, indices, weights, kept, num_experts, block_size):
    """Identity experts: each token gets back (sum of its kept gates) * x.

    Also checks that each kept assignment has its own slot, in a row of its
    expert, holding its token and gate, and that nothing else is filled.
    """
    num_tokens, k = indices.shape
    p = numpy_plan(plan)
    slots = p["assignment_slot"]
    slot_token = p["slot_token"].ravel()
    slot_weight = p["slot_weight"].ravel()
    filled = p["slot_filled"].ravel()
    kept_slots = slots[kept]
    assert len(set(kept_slots.tolist())) == kept.sum()
    np.testing.assert_array_equal(kept_slots // block_size, indices[kept])
    token_of_assignment = np.repeat(np.arange(num_tokens)[:, None], k, 1)
    np.testing.assert_array_equal(slot_token[kept_slots],
                                  token_of_assignment[kept])
    np.testing.assert_allclose(slot_weight[kept_slots], weights[kept])
    assert filled[kept_slots].all() and filled.sum() == kept.sum()
    np.testing.assert_array_equal(slot_weight[~filled], 0.0)
    np.testing.assert_allclose(p["assignment_weight"], weights * kept)

    x = np.random.RandomState(1).randn(num_tokens, 6).astype("float32")
    buffer = dispatch.dispatch(ops.convert_to_tensor(x), plan)
    buffer_np = ops.convert_to_numpy(buffer).reshape(-1, 6)
    np.testing.assert_array_equal(buffer_np[~filled], 0.0)
    y = ops.convert_to_numpy(dispatch.combine(buffer, plan))
    expected = (weights * kept).sum(1, keepdims=True) * x
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "num_tokens, k, num_experts, capacity_factor, num_groups", [
        (12, 2, 4, 1.0, 1), (12, 1, 4, 0.5, 1), (30, 3, 5, 0.8, 1),
        (9, 2, 8, 4.0, 1), (12, 2, 4, 1.0, 3), (32, 2, 8, 0.75, 4)])
def test_capacity_and_slots_match_reference(num_tokens, k, num_experts,
                                            capacity_factor, num_groups):
    indices, weights = random_routing(num_tokens, k, num_experts, skew=0.7)
    group_size = num_tokens // num_groups
    capacity = dispatch.expert_capacity(group_size, num_experts, k,
                                        capacity_factor)
    assert capacity == max(1, min(group_size, int(np.ceil(
        capacity_factor * group_size * k / num_experts))))
    plan = dispatch.plan_top_k(ops.convert_to_tensor(indices),
                               ops.convert_to_tensor(weights), num_experts,
                               capacity, num_groups)
    assert tuple(plan.slot_token.shape) == (num_experts,
                                            num_groups * capacity)
    kept = ref.capacity_kept(indices, num_experts, capacity, num_groups)
    np.testing.assert_allclose(ops.convert_to_numpy(plan.dropped_fraction),
                               1.0 - kept.mean(), rtol=1e-6)
    check_expert_counts(plan, indices, kept, num_experts)
    # Slot e * G * C + g * C + c is slot c of expert e in group g.
    check_round_trip(plan, indices, weights, kept, num_experts,
                     block_size=num_groups * capacity)
    slot_group = (ops.convert_to_numpy(plan.slot_token) // group_size)
    filled = ops.convert_to_numpy(plan.slot_filled)
    expected_group = np.repeat(np.arange(num_groups), capacity)[None, :]
    np.testing.assert_array_equal(
        slot_group[filled], np.broadcast_to(expected_group, filled.shape)[
            filled])


def test_first_choices_outrank_second_choices():
    # Three tokens all want expert 0: token 2 as first choice, tokens 0 and 1
    # as second choice. With one slot, token 2 gets it.
    indices = np.array([[1, 0], [2, 0], [0, 1]], dtype="int32")
    plan = dispatch.plan_top_k(ops.convert_to_tensor(indices),
                               ops.ones((3, 2)), 3, 1)
    kept = ops.convert_to_numpy(plan.assignment_weight) > 0
    np.testing.assert_array_equal(kept, [[True, False], [True, False],
                                         [True, False]])


def test_out_of_range_index_means_no_expert():
    # Tokens 1 and 3 have no second expert (index E = 3): they take no
    # slot, so every real assignment fits in two slots per expert.
    indices = np.array([[1, 2], [2, 3], [0, 1], [0, 3]], dtype="int32")
    weights = np.full((4, 2), 0.5, "float32")
    plan = dispatch.plan_top_k(ops.convert_to_tensor(indices),
                               ops.convert_to_tensor(weights), 3, 2)
    kept = ref.capacity_kept(indices, 3, 2)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(plan.assignment_weight) > 0, kept)
    # The two "none" choices are neither kept nor dropped.
    assert kept.sum() == 6
    assert float(ops.convert_to_numpy(plan.dropped_fraction)) == 0.0
    check_expert_counts(plan, indices, kept, 3)
    check_round_trip(plan, indices, weights, kept, 3, block_size=2)


def overflow_numpy(plan):
    overflow = plan.overflow
    values = {name: ops.convert_to_numpy(value) for name, value in
              overflow._asdict().items() if name != "blocks"}
    blocks = overflow.blocks
    count = int(ops.convert_to_numpy(blocks.count))
    values["blocks"] = [
        tuple(int(v) for v in ops.convert_to_numpy(ops.stack(
            [blocks.expert[i], blocks.start[i], blocks.length[i]])))
        for i in range(count)]
    return values


@pytest.mark.parametrize("num_tokens, k, num_experts, capacity, block_size, "
                         "skew", [
                             (12, 2, 4, 2, 4, 0.7), (30, 3, 5, 3, 2, 2.0),
                             (9, 2, 8, 1, 3, 0.0), (16, 1, 2, 4, 16, 5.0),
                             (7, 2, 16, 1, 1, 0.3), (40, 2, 4, 20, 5, 0.0),
                             (7, 2, 16, 0, 2, 0.3), (5, 3, 32, 0, 2, 2.0)])
def test_dropless_keeps_every_assignment(num_tokens, k, num_experts,
                                         capacity, block_size, skew):
    indices, weights = random_routing(num_tokens, k, num_experts,
                                      seed=num_experts, skew=skew)
    plan = dispatch.plan_dropless(ops.convert_to_tensor(indices),
                                  ops.convert_to_tensor(weights), num_experts,
                                  capacity, block_size)
    assert float(ops.convert_to_numpy(plan.dropped_fraction)) == 0.0
    check_expert_counts(plan, indices, np.ones(indices.shape, bool),
                        num_experts)
    assert tuple(plan.slot_token.shape) == (num_experts, capacity)
    # The buffer holds what capacity dispatch would keep, exactly as
    # plan_top_k holds it.
    in_buffer = ref.capacity_kept(indices, num_experts, capacity)
    top_k = numpy_plan(dispatch.plan_top_k(
        ops.convert_to_tensor(indices), ops.convert_to_tensor(weights),
        num_experts, capacity))
    p = numpy_plan(plan)
    for name in ("slot_token", "slot_weight", "slot_filled"):
        np.testing.assert_array_equal(p[name], top_k[name])
    np.testing.assert_array_equal(p["assignment_slot"][in_buffer],
                                  top_k["assignment_slot"][in_buffer])
    np.testing.assert_allclose(p["assignment_weight"], weights)

    # The rest are overflow rows: one each, of their expert, token and gate,
    # sorted by expert, first choices first.
    o = overflow_numpy(plan)
    num_rows = len(o["row_token"])
    assert num_rows == num_tokens * k + block_size
    overflow_rows = p["assignment_slot"][~in_buffer] - num_experts * capacity
    assert len(set(overflow_rows.tolist())) == (~in_buffer).sum()
    np.testing.assert_array_equal(np.sort(overflow_rows),
                                  np.arange((~in_buffer).sum()))
    token = np.repeat(np.arange(num_tokens)[:, None], k, 1)
    np.testing.assert_array_equal(o["row_token"][overflow_rows],
                                  token[~in_buffer])
    np.testing.assert_array_equal(o["row_expert"][overflow_rows],
                                  indices[~in_buffer])
    np.testing.assert_allclose(o["row_weight"][overflow_rows],
                               weights[~in_buffer])
    used = o["row_used"]
    assert used.sum() == (~in_buffer).sum() and used[:used.sum()].all()
    np.testing.assert_array_equal(o["row_weight"][~used], 0.0)
    assert np.all(np.diff(o["row_expert"][used]) >= 0)

    # Blocks: consecutive, each within one expert's rows, at most
    # block_size long, covering exactly the used rows.
    covered = []
    for expert, start, length in o["blocks"]:
        assert 1 <= length <= block_size
        rows = np.arange(start, start + length)
        np.testing.assert_array_equal(o["row_expert"][rows], expert)
        covered.extend(rows.tolist())
    np.testing.assert_array_equal(covered, np.arange(used.sum()))
    counts = np.bincount(indices.ravel(), minlength=num_experts)
    assert len(o["blocks"]) == (-(-np.maximum(counts - capacity, 0)
                                  // block_size)).sum()

    # Identity experts: every token gets (sum of its gates) * x back.
    x = np.random.RandomState(1).randn(num_tokens, 6).astype("float32")
    x_tensor = ops.convert_to_tensor(x)
    rows, _, _ = dispatch.dispatch_overflow(x_tensor, plan)
    y = ops.convert_to_numpy(dispatch.combine(
        dispatch.dispatch(x_tensor, plan), plan, overflow_outputs=rows))
    np.testing.assert_allclose(y, weights.sum(1, keepdims=True) * x,
                               rtol=1e-5, atol=1e-6)


def test_dropless_default_capacity_is_the_balanced_tail():
    assert dispatch.dropless_capacity(4096, 1024, 2) == 14  # 8 + 2 sqrt(8)
    assert dispatch.dropless_capacity(4096, 8, 2) == 1088
    assert dispatch.dropless_capacity(32, 64, 2) == 3  # 1 + 2 sqrt(1)
    assert dispatch.dropless_capacity(16, 1, 2) == 16  # at most N
    indices, weights = random_routing(64, 2, 8, skew=3.0)
    plan = dispatch.plan_dropless(ops.convert_to_tensor(indices),
                                  ops.convert_to_tensor(weights), 8)
    capacity = dispatch.dropless_capacity(64, 8, 2)
    assert tuple(plan.slot_token.shape) == (8, capacity)
    assert plan.overflow.blocks.size == capacity


def test_dropless_plan_has_no_buffer_below_one_assignment_per_expert():
    """N k < E (decoding): no buffer slot, so no expert's weights are read
    unless an assignment needs them; each expert in use is one block."""
    assert dispatch.dropless_capacity(31, 64, 2) == 0
    assert dispatch.dropless_capacity(1, 256, 4) == 0
    assert dispatch.dropless_block_size(1, 256, 4) == 2  # never one row
    assert dispatch.dropless_block_size(3, 16, 2) == 2  # ceil(.375 + 1.22)
    indices = np.array([[5, 9], [9, 5], [2, 9]])
    weights = np.full(indices.shape, 0.5, "float32")
    plan = dispatch.plan_dropless(ops.convert_to_tensor(indices),
                                  ops.convert_to_tensor(weights), 16)
    assert tuple(plan.slot_token.shape) == (16, 0)
    assert plan.overflow.blocks.size == 2
    # Expert 2 once, expert 5 twice, expert 9 three times (two blocks).
    assert overflow_numpy(plan)["blocks"] == [(2, 0, 1), (5, 1, 2),
                                              (9, 3, 2), (9, 5, 1)]


def test_expert_choice_plan_sums_slots_into_tokens():
    # Expert 0 takes tokens 2 and 0, expert 1 takes 2 and one empty slot;
    # token 1 is taken by nobody.
    slot_token = np.array([[2, 0], [2, 1]], "int32")
    slot_weight = np.array([[0.5, 0.25], [0.125, 0.0]], "float32")
    plan = dispatch.plan_expert_choice(ops.convert_to_tensor(slot_token),
                                       ops.convert_to_tensor(slot_weight), 3)
    x = np.arange(6, dtype="float32").reshape(3, 2) + 1.0
    buffer = ops.convert_to_numpy(
        dispatch.dispatch(ops.convert_to_tensor(x), plan))
    np.testing.assert_array_equal(buffer[1, 1], 0.0)
    np.testing.assert_array_equal(buffer[0, 0], x[2])
    outputs = 10.0 * buffer + np.array([0.0, 1.0])  # an expert per row
    y = ops.convert_to_numpy(dispatch.combine(
        ops.convert_to_tensor(outputs), plan, 3))
    expected = np.stack([0.25 * outputs[0, 1], np.zeros(2),
                         0.5 * outputs[0, 0] + 0.125 * outputs[1, 0]])
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(plan.dropped_fraction),
                               1.0 / 3.0, rtol=1e-6)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(plan.expert_dispatched), [2, 1])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(plan.expert_dropped), [0, 0])


def test_buffer_grows_with_tokens_times_k_not_experts():
    for num_experts in (4, 64, 512):
        indices, weights = random_routing(64, 2, num_experts,
                                          seed=num_experts)
        capacity = dispatch.expert_capacity(64, num_experts, 2, 1.0)
        plan = dispatch.plan_top_k(ops.convert_to_tensor(indices),
                                   ops.convert_to_tensor(weights),
                                   num_experts, capacity)
        # Slots = E * ceil(T * k / E) <= T * k + E.
        assert np.prod(plan.slot_token.shape) <= 64 * 2 + num_experts
        dropless = dispatch.plan_dropless(ops.convert_to_tensor(indices),
                                          ops.convert_to_tensor(weights),
                                          num_experts, block_size=4)
        # Buffer E * (m + 2 sqrt(m)) plus N k + 4 overflow rows.
        assert (np.prod(dropless.slot_token.shape)
                <= 64 * 2 + 2 * np.sqrt(64 * 2 * num_experts) + num_experts)
        assert dropless.overflow.row_token.shape[0] == 64 * 2 + 4


def test_min_capacity():
    assert dispatch.expert_capacity(64, 16, 2, 1.0) == 8
    assert dispatch.expert_capacity(64, 16, 2, 1.0, min_capacity=12) == 12
    # Never more slots than tokens in the group.
    assert dispatch.expert_capacity(8, 16, 2, 1.0, min_capacity=12) == 8


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`capacity_factor`"):
        dispatch.expert_capacity(8, 4, 2, 0.0)
    with pytest.raises(ValueError, match="`min_capacity`"):
        dispatch.expert_capacity(8, 4, 2, 1.0, min_capacity=0)
    with pytest.raises(ValueError, match="`block_size`"):
        dispatch.plan_dropless(ops.zeros((4, 2), "int32"), ops.ones((4, 2)),
                               4, block_size=0)
