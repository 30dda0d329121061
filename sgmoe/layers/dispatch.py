"""Sparse, static-shape dispatch of tokens to experts and back.

A router's decision becomes a `DispatchPlan`: which token sits in each row of
an expert buffer, and how each token gathers its outputs back. Three plans
cover every router:

* `plan_top_k`: tokens chose their experts (noisy top-k, Switch, GShard);
  each expert has `capacity` rows per group of tokens, and assignments over
  it are dropped. The buffer is [E, groups * capacity, d].
* `plan_dropless`: tokens chose their experts and none is dropped (MegaBlocks,
  Gale et al. 2022): each expert's first assignments fill an [E, C, d]
  buffer as above, and the rest overflow into a list of N k rows sorted by
  expert, which the experts compute in blocks of one expert each
  (`Overflow`).
* `plan_expert_choice`: the router filled the experts' rows itself (expert
  choice, strictly balanced gating): [E, C] tokens and gate values.

Tokens move by sorting the (token, choice) assignments by expert and by
gathers: data movement is O(tokens * k * d) and the buffer holds about
capacity_factor * tokens * k rows, so nothing grows with tokens * experts,
unlike the one-hot dispatch/combine einsums of GShard-style code
(tokens * experts * capacity * d) or running every expert on every token.
Every shape is a function of static sizes, so plans compile under XLA
(`jit_compile=True` on TensorFlow, `jax.jit`).
"""

import math
from typing import Any
from typing import NamedTuple

from keras import ops

from sgmoe import _validation
from sgmoe.layers._grouped_matmul import Blocks
from sgmoe.layers.routers.routing_result import ExpertSlots

# Sort keys are bucket * assignments + assignment, held in int32.
_MAX_SORT_KEY = 2**31 - 1


class DispatchPlan(NamedTuple):
    """Where tokens go in the expert buffer and how they come back.

    Attributes:
        slot_token: int32 [rows, slots_per_row], the token held by each slot
            of the buffer (an arbitrary valid index for empty slots). Row e
            belongs to expert e.
        slot_weight: float32, same shape: the gate value of the slot's
            (token, expert) pair, 0 where the slot is empty.
        slot_filled: bool, same shape: whether the slot holds a token.
        assignment_slot: int32 [N, k], the flat buffer slot of each (token,
            choice) assignment (any valid slot where it was dropped), or None
            when the router filled the slots itself. With `overflow`, slot
            rows * slots_per_row + r is row r of the overflow list.
        assignment_weight: float32 [N, k], the gate value of each kept
            assignment, 0 where it was dropped (None with `assignment_slot`).
        dropped_fraction: float32 scalar, the fraction of token-expert
            assignments dropped (token choice), or of tokens no expert took
            (expert choice).
        expert_dispatched: float32 [E], the assignments each expert
            computes (buffer slots filled, and overflow rows).
        expert_dropped: float32 [E], the assignments to each expert dropped
            for lack of capacity (zeros for dropless and expert-choice
            plans: an expert-choice router drops tokens, not an expert's
            assignments).
        num_groups: G, a static int: with G > 1 (`plan_top_k` only) the
            buffer [E, G * C] holds group g's tokens in columns g * C ...
            (g + 1) * C - 1, and every token's slots lie in its own group's
            columns, so `dispatch` and `combine` gather within groups.
        overflow: an `Overflow` (dropless plans), or None.
    """

    slot_token: Any
    slot_weight: Any
    slot_filled: Any
    assignment_slot: Any
    assignment_weight: Any
    dropped_fraction: Any
    expert_dispatched: Any
    expert_dropped: Any
    num_groups: int = 1
    overflow: Any = None


class Overflow(NamedTuple):
    """Assignments past the buffer's capacity, as rows sorted by expert.

    Attributes:
        row_token: int32 [N k + S], the token of each overflow row (an
            arbitrary valid index for rows past the overflow in use).
        row_expert: int32 [N k + S], the expert of each row (the last
            expert for unused rows).
        row_weight: float32 [N k + S], the gate value of each row's (token,
            expert) pair, 0 for unused rows.
        row_used: bool [N k + S], whether the row holds an assignment.
        blocks: `_grouped_matmul.Blocks` cutting the rows in use into
            blocks of at most S rows of one expert, S = `blocks.size`.
    """

    row_token: Any
    row_expert: Any
    row_weight: Any
    row_used: Any
    blocks: Any


def expert_capacity(tokens_per_group, num_experts, k, capacity_factor,
                    min_capacity=1):
    """Slots per expert and group: ceil(capacity_factor * tokens * k / E).

    At least `min_capacity`, and at most `tokens_per_group` (a token picks
    an expert at most once, so more slots could never be filled).
    `tokens_per_group` is a Python int when the shape is static (JAX, or
    TensorFlow with a fixed batch) and a scalar tensor otherwise; XLA folds
    the latter into a constant when it compiles for concrete shapes.
    """
    capacity_factor = _validation.check_positive_float(
        "capacity_factor", capacity_factor)
    min_capacity = _validation.check_positive_int("min_capacity",
                                                  min_capacity)
    if isinstance(tokens_per_group, int):
        capacity = math.ceil(capacity_factor * tokens_per_group * k
                             / num_experts)
        return max(1, min(tokens_per_group, max(min_capacity, capacity)))
    capacity = ops.cast(
        ops.ceil(capacity_factor * ops.cast(tokens_per_group, "float32") * k
                 / num_experts), "int32")
    return ops.maximum(
        ops.minimum(ops.maximum(capacity, min_capacity), tokens_per_group), 1)


def _choice_major(values):
    """[N, k] -> [k * N]: assignment a = j * N + n is choice j of token n."""
    return ops.reshape(ops.transpose(values), (-1,))


def _token_major(values, k, num_tokens):
    """[k * N] -> [N, k], the inverse of `_choice_major`."""
    return ops.transpose(ops.reshape(values, (k, num_tokens)))


def _sort_into_buckets(bucket, num_buckets):
    """Stable counting sort of assignments by bucket.

    Args:
        bucket: int32 [A], the bucket of each assignment.
        num_buckets: static number of buckets.

    Returns:
        (order, position, count, start): `order` [A] lists the assignments
        sorted by bucket, then by assignment index; `position` [A] is each
        assignment's rank within its bucket; `count` and `start` [buckets]
        are each bucket's size and its offset in `order`.
    """
    num_assignments = ops.shape(bucket)[0]
    if (isinstance(num_assignments, int)
            and num_buckets * num_assignments > _MAX_SORT_KEY):
        raise ValueError(
            f"Too many token assignments ({num_assignments}) for "
            f"{num_buckets} expert buckets in one dispatch: their product "
            "must stay below 2**31. Split the macro-batch.")
    assignment = ops.arange(num_assignments, dtype="int32")
    # Unique keys make any sort stable.
    order = ops.cast(ops.argsort(bucket * num_assignments + assignment),
                     "int32")
    count = ops.cast(ops.segment_sum(ops.ones_like(bucket), bucket,
                                     num_segments=num_buckets), "int32")
    start = ops.cumsum(count) - count
    sorted_position = assignment - ops.take(start, ops.take(bucket, order))
    position = ops.scatter(ops.expand_dims(order, -1), sorted_position,
                           (num_assignments,))
    return order, position, count, start


def _valid_experts(expert_indices, num_experts):
    """Choice-major experts [A] and whether each names a real expert."""
    expert = _choice_major(ops.cast(expert_indices, "int32"))
    valid = ops.logical_and(ops.greater_equal(expert, 0),
                            ops.less(expert, num_experts))
    return expert, valid


def _fraction(count, total):
    count = ops.cast(count, "float32")
    return count / ops.maximum(ops.cast(total, "float32"), 1.0)


def plan_top_k(expert_indices, expert_weights, num_experts, capacity,
               num_groups=1):
    """Plans token-choice dispatch with a capacity per expert and group.

    Tokens are split into `num_groups` contiguous groups (GShard's groups);
    each expert takes at most `capacity` assignments from each group.
    Priority within an expert and group goes first by choice rank, then by
    token order: every token's first choice is served before any token's
    second choice, so overflow drops the least preferred assignments. An
    index outside [0, E) means "no expert" (e.g. GShard's second expert
    when random routing skipped it): it takes no slot and counts as neither
    kept nor dropped.

    Args:
        expert_indices: int [N, k] with static k.
        expert_weights: float [N, k], the gate values.
        num_experts: E.
        capacity: C, slots per expert and group, from `expert_capacity`.
        num_groups: G, which must divide N.

    Returns:
        A `DispatchPlan` with an [E, G * C] buffer.
    """
    k = expert_indices.shape[1]
    num_tokens = ops.shape(expert_indices)[0]
    expert, valid = _valid_experts(expert_indices, num_experts)
    if num_groups > 1:
        # Expert-major buckets e * G + g, so the [E * G, C] buffer is the
        # [E, G * C] buffer the experts run on.
        token_group = ops.arange(num_tokens, dtype="int32") // (
            num_tokens // num_groups)
        bucket = expert * num_groups + ops.tile(token_group, (k,))
    else:
        bucket = expert
    num_buckets = num_experts * num_groups
    bucket = ops.where(valid, bucket, num_buckets)
    order, position, count, start = _sort_into_buckets(bucket,
                                                       num_buckets + 1)

    kept = ops.logical_and(valid, ops.less(position, capacity))
    slot = ops.where(kept, bucket * capacity + position, 0)
    slot_token, slot_weight, slot_filled = _buffer_slots(
        order, count[:num_buckets], start[:num_buckets], expert_weights,
        capacity, num_tokens)
    rows = (num_experts, -1)
    assigned = ops.reshape(count[:num_buckets], rows)  # [E, G]
    dispatched = ops.cast(ops.sum(ops.minimum(assigned, capacity), axis=1),
                          "float32")
    return DispatchPlan(
        slot_token=ops.reshape(slot_token, rows),
        slot_weight=ops.reshape(slot_weight, rows),
        slot_filled=ops.reshape(slot_filled, rows),
        assignment_slot=_token_major(slot, k, num_tokens),
        assignment_weight=ops.where(
            _token_major(kept, k, num_tokens),
            ops.cast(expert_weights, "float32"), 0.0),
        dropped_fraction=1.0 - _fraction(ops.sum(ops.cast(kept, "int32")),
                                         ops.sum(ops.cast(valid, "int32"))),
        expert_dispatched=dispatched,
        expert_dropped=ops.cast(ops.sum(assigned, axis=1),
                                "float32") - dispatched,
        num_groups=num_groups)


def _buffer_slots(order, count, start, expert_weights, capacity, num_tokens):
    """Each bucket's first `capacity` assignments as buffer slots.

    Args:
        order, count, start: from `_sort_into_buckets`, `count` and `start`
            cut to the buckets that have slots.
        expert_weights: float [N, k].
        capacity: slots per bucket.
        num_tokens: N.

    Returns:
        (slot_token, slot_weight, slot_filled), each [buckets, capacity].
    """
    num_assignments = ops.shape(order)[0]
    slot_index = ops.expand_dims(ops.arange(capacity, dtype="int32"), 0)
    slot_filled = ops.less(slot_index, ops.expand_dims(
        ops.minimum(count, capacity), 1))
    slot_assignment = ops.take(order, ops.minimum(
        ops.expand_dims(start, 1) + slot_index, num_assignments - 1))
    weights = _choice_major(ops.cast(expert_weights, "float32"))
    slot_weight = ops.where(slot_filled, ops.take(weights, slot_assignment),
                            0.0)
    return ops.mod(slot_assignment, num_tokens), slot_weight, slot_filled


def dropless_capacity(num_tokens, num_experts, k):
    """Buffer slots per expert of a dropless plan: m + 2 sqrt(m), m = N k / E.

    The load of a balanced router is about Poisson with mean m, so few
    experts overflow a buffer this size and the overflow rows, computed block
    by block, stay a small part of the work; the buffer itself is at most
    1 + 2 / sqrt(m) times the mean load. At most N (an expert gets a token
    at most once).

    With fewer assignments than experts (N k < E, static N: decoding a few
    sequences through many experts), 0: a buffer of even one slot per
    expert would read every expert's weights to serve at most N k of them,
    so every assignment goes to the overflow blocks, which read only the
    weights of the experts in use (`dropless_block_size` rows per block).
    """
    if isinstance(num_tokens, int):
        if num_tokens * k < num_experts:
            return 0
        mean = num_tokens * k / num_experts
        return max(1, min(num_tokens,
                          math.ceil(mean + 2 * math.sqrt(mean))))
    mean = ops.cast(num_tokens, "float32") * k / num_experts
    capacity = ops.cast(ops.ceil(mean + 2 * ops.sqrt(mean)), "int32")
    return ops.maximum(ops.minimum(capacity, num_tokens), 1)


def dropless_block_size(num_tokens, num_experts, k):
    """Rows per overflow block of a dropless plan with a static N and no
    buffer: max(2, min(N, ceil(m + 2 sqrt(m)))), m = N k / E.

    At least 2: a one-row block is a matrix-vector product, which XLA:CPU
    under TensorFlow runs several times slower than a two-row matmul
    (bench/README.md, `inference_dispatch.py`).
    """
    mean = num_tokens * k / num_experts
    return max(2, min(num_tokens, math.ceil(mean + 2 * math.sqrt(mean))))


# Rows per overflow block when the buffer's capacity is not static.
DEFAULT_BLOCK_SIZE = 64


def plan_dropless(expert_indices, expert_weights, num_experts, capacity=None,
                  block_size=None):
    """Plans token-choice dispatch that never drops an assignment.

    Each expert takes its first `capacity` assignments (first choices
    first, as in `plan_top_k`) into an [E, capacity] buffer; the rest, its
    overflow, become rows of an overflow list sorted by expert, cut into
    blocks of at most `block_size` rows of one expert
    (`DispatchPlan.overflow`). The
    experts multiply the buffer as one batched matmul and the blocks one by
    one with their expert's weights (`_grouped_matmul.grouped_matmul`), so
    the work is the buffer plus the overflow actually present, whatever the
    routing skew, and every shape is static: the overflow list has N k
    rows (the most there can be) plus one block of padding. An index outside
    [0, E) means "no expert", as in `plan_top_k`.

    Args:
        expert_indices: int [N, k] with static k.
        expert_weights: float [N, k].
        num_experts: E.
        capacity: buffer slots per expert (0: no buffer, every assignment
            in the overflow blocks), or None for `dropless_capacity`.
        block_size: most rows per overflow block, or None for the capacity
            (`dropless_block_size` when it is 0, `DEFAULT_BLOCK_SIZE` when
            it is not a static int).

    Returns:
        A `DispatchPlan` with `overflow` set and nothing dropped.
    """
    k = expert_indices.shape[1]
    num_tokens = ops.shape(expert_indices)[0]
    num_assignments = num_tokens * k
    if capacity is None:
        capacity = dropless_capacity(num_tokens, num_experts, k)
    if block_size is None:
        if not isinstance(capacity, int):
            block_size = DEFAULT_BLOCK_SIZE
        elif capacity or not isinstance(num_tokens, int):
            block_size = max(capacity, 1)
        else:
            block_size = dropless_block_size(num_tokens, num_experts, k)
    block_size = _validation.check_positive_int("block_size", block_size)
    expert, valid = _valid_experts(expert_indices, num_experts)
    bucket = ops.where(valid, expert, num_experts)
    order, position, count, start = _sort_into_buckets(bucket,
                                                       num_experts + 1)
    count, start = count[:num_experts], start[:num_experts]
    in_buffer = ops.logical_and(valid, ops.less(position, capacity))
    slot_token, slot_weight, slot_filled = _buffer_slots(
        order, count, start, expert_weights, capacity, num_tokens)

    # Overflow: expert e's assignments past its capacity, rows
    # overflow_start[e] ... overflow_start[e] + overflow_count[e] - 1.
    overflow_count = ops.maximum(count - capacity, 0)
    overflow_end = ops.cumsum(overflow_count)
    overflow_start = overflow_end - overflow_count
    row = ops.arange(num_assignments + block_size, dtype="int32")
    row_expert = ops.minimum(
        ops.cast(ops.searchsorted(overflow_end, row, side="right"), "int32"),
        num_experts - 1)
    row_assignment = ops.take(order, ops.clip(
        ops.take(start, row_expert) + capacity + row
        - ops.take(overflow_start, row_expert), 0, num_assignments - 1))

    expert_blocks = (overflow_count + block_size - 1) // block_size
    blocks_end = ops.cumsum(expert_blocks)
    max_blocks = _max_blocks(num_assignments, num_experts, block_size)
    block = ops.arange(max_blocks, dtype="int32")
    block_expert = ops.minimum(
        ops.cast(ops.searchsorted(blocks_end, block, side="right"), "int32"),
        num_experts - 1)
    block_offset = block_size * (
        block - ops.take(blocks_end - expert_blocks, block_expert))
    weights = ops.cast(expert_weights, "float32")
    row_used = ops.less(row, overflow_end[-1])
    overflow = Overflow(
        row_token=ops.mod(row_assignment, num_tokens),
        row_expert=row_expert,
        row_weight=ops.where(
            row_used, ops.take(_choice_major(weights), row_assignment), 0.0),
        row_used=row_used,
        blocks=Blocks(
            expert=block_expert,
            start=ops.take(overflow_start, block_expert) + block_offset,
            length=ops.clip(
                ops.take(overflow_count, block_expert) - block_offset, 0,
                block_size),
            count=blocks_end[-1],
            size=block_size))

    safe_expert = ops.minimum(expert, num_experts - 1)
    overflow_row = (ops.take(overflow_start, safe_expert) + position
                    - capacity)
    buffer_slots = num_experts * capacity
    slot = ops.where(in_buffer, expert * capacity + position,
                     ops.where(valid, buffer_slots + overflow_row, 0))
    return DispatchPlan(
        slot_token=slot_token,
        slot_weight=slot_weight,
        slot_filled=slot_filled,
        assignment_slot=_token_major(slot, k, num_tokens),
        assignment_weight=ops.where(_token_major(valid, k, num_tokens),
                                    weights, 0.0),
        dropped_fraction=ops.zeros((), "float32"),
        expert_dispatched=ops.cast(count, "float32"),
        expert_dropped=ops.zeros((num_experts,), "float32"),
        overflow=overflow)


def _max_blocks(num_assignments, num_experts, block_size):
    """Static bound on overflow blocks: ceil(A / size) plus one partial block
    per expert (at most A experts overflow)."""
    if isinstance(num_assignments, int):
        return -(-num_assignments // block_size) + min(num_experts,
                                                     num_assignments)
    return ((num_assignments + block_size - 1) // block_size
            + ops.minimum(num_experts, num_assignments))


def plan_expert_choice(slot_token, slot_weight, num_tokens):
    """Plans the dispatch a router filled itself: [E, C] tokens and gates.

    A slot with gate value 0 is empty. Each token's output is the sum of its
    slots' outputs weighted by their gates; a token in no slot gets zero.

    Args:
        slot_token: int [E, C], the token in each slot.
        slot_weight: float [E, C], its gate value (0 for an empty slot).
        num_tokens: N.
    """
    slot_token = ops.cast(slot_token, "int32")
    slot_weight = ops.cast(slot_weight, "float32")
    slot_filled = ops.greater(slot_weight, 0.0)
    times_taken = ops.segment_sum(
        ops.reshape(ops.cast(slot_filled, "float32"), (-1,)),
        ops.reshape(slot_token, (-1,)), num_segments=num_tokens)
    return DispatchPlan(
        slot_token=slot_token, slot_weight=slot_weight,
        slot_filled=slot_filled, assignment_slot=None,
        assignment_weight=None,
        dropped_fraction=1.0 - ops.mean(
            ops.cast(ops.greater(times_taken, 0.0), "float32")),
        expert_dispatched=ops.sum(ops.cast(slot_filled, "float32"), axis=1),
        expert_dropped=ops.zeros((ops.shape(slot_token)[0],), "float32"))


def plan_routing(routing, num_tokens, num_experts, capacity_factor=None,
                 min_capacity=1, num_groups=1, block_size=None):
    """The `DispatchPlan` of a router's result, whichever router made it.

    An `ExpertSlots` result (the router filled expert slots itself) gets
    `plan_expert_choice`. A `RoutingResult` (tokens chose experts) gets
    `plan_top_k` with `expert_capacity(N / num_groups, E, k,
    capacity_factor, min_capacity)` slots per expert and group, or, when
    `capacity_factor` is None, `plan_dropless` (no capacity, nothing
    dropped; `num_groups` and `min_capacity` do not apply).
    """
    if isinstance(routing, ExpertSlots):
        return plan_expert_choice(routing.slot_token, routing.slot_weight,
                                  num_tokens)
    if capacity_factor is None:
        return plan_dropless(routing.expert_indices, routing.expert_weights,
                             num_experts, block_size=block_size)
    if isinstance(num_tokens, int) and num_tokens % num_groups:
        raise ValueError(
            f"The number of token groups, {num_groups} (the MoE layer's "
            "`token_groups` or its router's), must divide the "
            f"number of tokens in the macro-batch, received {num_tokens} "
            "tokens.")
    capacity = expert_capacity(num_tokens // num_groups, num_experts,
                               routing.expert_indices.shape[1],
                               capacity_factor, min_capacity)
    return plan_top_k(routing.expert_indices, routing.expert_weights,
                      num_experts, capacity, num_groups)


def _to_groups(buffer, num_groups):
    """[E, G * C, ...] -> [G, E * C, ...]: each group's slots, expert-major."""
    trailing = tuple(buffer.shape[2:])
    grouped = ops.reshape(buffer, (buffer.shape[0], num_groups, -1) + trailing)
    grouped = ops.swapaxes(grouped, 0, 1)
    return ops.reshape(grouped, (num_groups, -1) + trailing)


def _from_groups(grouped, num_experts):
    """[G, E * C, ...] -> [E, G * C, ...], the inverse of `_to_groups`."""
    trailing = tuple(grouped.shape[2:])
    buffer = ops.reshape(grouped, (grouped.shape[0], num_experts, -1)
                         + trailing)
    buffer = ops.swapaxes(buffer, 0, 1)
    return ops.reshape(buffer, (num_experts, -1) + trailing)


def _gather_rows(values, rows):
    """values [G, R, d], rows int [G, M] -> [G, M, d]: row gathers per group.

    A gather with the group as a batch dimension: when G is split over
    devices, each device gathers from its own groups and nothing moves
    between them (XLA cannot see that locality in a flat gather whose
    indices could point anywhere).
    """
    return ops.take_along_axis(values, ops.expand_dims(rows, -1), axis=1)


def unplaced(values):
    """The identity: no placement asked for."""
    return values


def dispatch(tokens, plan, place_groups=unplaced):
    """Gathers tokens [N, d] into the expert buffer; empty slots are 0.

    `place_groups` is applied to the grouped [G, ., d] tensors of a plan
    with groups (a sharding constraint: see `MixtureOfExperts`).
    """
    if plan.num_groups > 1:
        num_groups = plan.num_groups
        num_experts = plan.slot_token.shape[0]
        group_size = ops.shape(tokens)[0] // num_groups
        # A filled slot of group g holds a token of group g; mod gives its
        # row within the group (and a valid row for an empty slot).
        rows = _to_groups(ops.mod(plan.slot_token, group_size), num_groups)
        grouped_tokens = place_groups(ops.reshape(
            tokens, (num_groups, group_size, tokens.shape[-1])))
        gathered = _from_groups(
            place_groups(_gather_rows(grouped_tokens, rows)), num_experts)
    else:
        gathered = ops.take(tokens, plan.slot_token, axis=0)
    return ops.where(ops.expand_dims(plan.slot_filled, -1), gathered,
                     ops.zeros_like(gathered))


def dispatch_overflow(tokens, plan):
    """The overflow of a dropless plan for `FeedForwardExperts`:
    (rows [N k + S, d], row_expert [N k + S], blocks)."""
    overflow = plan.overflow
    return (ops.take(tokens, overflow.row_token, axis=0),
            overflow.row_expert, overflow.blocks)


def combine(expert_outputs, plan, num_tokens=None, place_groups=unplaced,
            overflow_outputs=None):
    """Each token's gate-weighted sum of its expert outputs: -> [N, d_out].

    Dropped assignments contribute zero; a token with every assignment
    dropped gets a zero vector (a residual connection around the layer
    carries it through). Token-choice plans gather each token's k outputs
    (within its group when the plan has groups); expert-choice plans (no
    `assignment_slot`) sum the weighted slot outputs into their tokens, and
    need `num_tokens`. `place_groups` is as in `dispatch`. A dropless plan
    also needs the experts' `overflow_outputs` [N k + S, d_out].
    """
    output_dim = expert_outputs.shape[-1]
    if plan.assignment_slot is None:
        flat_outputs = ops.reshape(expert_outputs, (-1, output_dim))
        weighted = flat_outputs * ops.reshape(
            ops.cast(plan.slot_weight, flat_outputs.dtype), (-1, 1))
        return ops.segment_sum(weighted, ops.reshape(plan.slot_token, (-1,)),
                               num_segments=num_tokens)
    if plan.num_groups > 1:
        num_groups = plan.num_groups
        group_slots = ops.shape(expert_outputs)[1]  # G * C
        capacity = group_slots // num_groups
        slot = plan.assignment_slot  # (e * G + g) * C + position
        # The slot's place in its group's [E * C] rows: e * C + position.
        rows = (slot // group_slots) * capacity + ops.mod(slot, capacity)
        k = rows.shape[1]
        gathered = ops.reshape(
            place_groups(_gather_rows(
                place_groups(_to_groups(expert_outputs, num_groups)),
                ops.reshape(rows, (num_groups, -1)))),
            (-1, k, output_dim))  # [N, k, d]
    else:
        flat_outputs = ops.reshape(expert_outputs, (-1, output_dim))
        if plan.overflow is not None:
            flat_outputs = ops.concatenate([flat_outputs, overflow_outputs])
        gathered = ops.take(flat_outputs, plan.assignment_slot,
                            axis=0)  # [N, k, d]
    return ops.einsum("nk,nkd->nd",
                      ops.cast(plan.assignment_weight, gathered.dtype),
                      gathered)
