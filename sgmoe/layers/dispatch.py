"""Sparse, static-shape dispatch of tokens to experts and back.

A router's decision becomes a `DispatchPlan`: which token sits in each row of
an expert buffer, and how each token gathers its outputs back. Three plans
cover every router:

* `plan_top_k`: tokens chose their experts (noisy top-k, Switch, GShard);
  each expert has `capacity` rows per group of tokens, and assignments over
  it are dropped. The buffer is [E, groups * capacity, d].
* `plan_dropless`: tokens chose their experts and none is dropped (MegaBlocks,
  Gale et al. 2022): each expert's assignments fill whole blocks of
  `block_size` rows, the last one padded. The buffer is [blocks, block_size,
  d] with the expert of every block; the number of blocks is the static bound
  ceil((N k + min(E, N k) (block_size - 1)) / block_size).
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
from sgmoe.layers.routing_result import ExpertSlots

# Sort keys are bucket * assignments + assignment, held in int32.
_MAX_SORT_KEY = 2**31 - 1


class DispatchPlan(NamedTuple):
    """Where tokens go in the expert buffer and how they come back.

    Attributes:
        slot_token: int32 [rows, slots_per_row], the token held by each slot
            of the buffer (an arbitrary valid index for empty slots). Row r
            belongs to expert r, or to `block_expert[r]` when that is set.
        slot_weight: float32, same shape: the gate value of the slot's
            (token, expert) pair, 0 where the slot is empty.
        slot_filled: bool, same shape: whether the slot holds a token.
        block_expert: int32 [rows], the expert of each buffer row, or None
            when row e is expert e.
        assignment_slot: int32 [N, k], the flat buffer slot of each (token,
            choice) assignment (any valid slot where it was dropped), or None
            when the router filled the slots itself.
        assignment_weight: float32 [N, k], the gate value of each kept
            assignment, 0 where it was dropped (None with `assignment_slot`).
        dropped_fraction: float32 scalar, the fraction of token-expert
            assignments dropped (token choice), or of tokens no expert took
            (expert choice).
        num_groups: G, a static int: with G > 1 (`plan_top_k` only) the
            buffer [E, G * C] holds group g's tokens in columns g * C ...
            (g + 1) * C - 1, and every token's slots lie in its own group's
            columns, so `dispatch` and `combine` gather within groups.
    """

    slot_token: Any
    slot_weight: Any
    slot_filled: Any
    block_expert: Any
    assignment_slot: Any
    assignment_weight: Any
    dropped_fraction: Any
    num_groups: int = 1


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
    num_assignments = num_tokens * k
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

    slot_index = ops.expand_dims(ops.arange(capacity, dtype="int32"), 0)
    slot_filled = ops.less(slot_index, ops.expand_dims(
        ops.minimum(count[:num_buckets], capacity), 1))  # [E * G, C]
    slot_assignment = ops.take(order, ops.minimum(
        ops.expand_dims(start[:num_buckets], 1) + slot_index,
        num_assignments - 1))
    weights = ops.cast(expert_weights, "float32")
    slot_weight = ops.where(
        slot_filled, ops.take(_choice_major(weights), slot_assignment), 0.0)

    rows = (num_experts, -1)
    return DispatchPlan(
        slot_token=ops.reshape(ops.mod(slot_assignment, num_tokens), rows),
        slot_weight=ops.reshape(slot_weight, rows),
        slot_filled=ops.reshape(slot_filled, rows),
        block_expert=None,
        assignment_slot=_token_major(slot, k, num_tokens),
        assignment_weight=ops.where(_token_major(kept, k, num_tokens),
                                    weights, 0.0),
        dropped_fraction=1.0 - _fraction(ops.sum(ops.cast(kept, "int32")),
                                         ops.sum(ops.cast(valid, "int32"))),
        num_groups=num_groups)


def num_dropless_blocks(num_assignments, num_experts, block_size):
    """Static bound on the blocks a dropless plan needs.

    Each expert with n > 0 assignments fills ceil(n / block_size) blocks, at
    most (n + block_size - 1) / block_size; at most min(E, N k) experts are
    non-empty.
    """
    if isinstance(num_assignments, int):
        padding = min(num_experts, num_assignments) * (block_size - 1)
    else:
        padding = ops.minimum(num_experts, num_assignments) * (block_size - 1)
    return (num_assignments + padding + block_size - 1) // block_size


# The largest automatic dropless block.
MAX_AUTO_BLOCK_SIZE = 128


def auto_block_size(num_assignments, num_experts):
    """Rows per dropless block: N k / E, within [1, MAX_AUTO_BLOCK_SIZE].

    Padding adds at most E (block_size - 1) rows and every block gathers its
    expert's weights, so blocks of about the mean load keep both the rows
    (under 2 N k) and the weight traffic (about 2 E expert matrices) within
    a small factor of what the layer must do anyway.
    """
    if isinstance(num_assignments, int):
        return max(1, min(MAX_AUTO_BLOCK_SIZE,
                          num_assignments // num_experts))
    return ops.clip(num_assignments // num_experts, 1, MAX_AUTO_BLOCK_SIZE)


def plan_dropless(expert_indices, expert_weights, num_experts,
                  block_size=None):
    """Plans token-choice dispatch that never drops an assignment.

    Each expert's assignments (first choices first) fill consecutive blocks of
    `block_size` rows; the expert's last block is padded with empty slots.
    The buffer [blocks, block_size, d] holds at most N k + E (block_size - 1)
    rows, and `block_expert` says whose weights each block uses. An index
    outside [0, E) means "no expert", as in `plan_top_k`.

    Args:
        expert_indices: int [N, k] with static k.
        expert_weights: float [N, k].
        num_experts: E.
        block_size: rows per block (> 0), or None for `auto_block_size`.

    Returns:
        A `DispatchPlan` with `block_expert` set and nothing dropped.
    """
    k = expert_indices.shape[1]
    num_tokens = ops.shape(expert_indices)[0]
    num_assignments = num_tokens * k
    if block_size is None:
        block_size = auto_block_size(num_assignments, num_experts)
    else:
        block_size = _validation.check_positive_int("block_size", block_size)
    expert, valid = _valid_experts(expert_indices, num_experts)
    bucket = ops.where(valid, expert, num_experts)
    order, position, count, start = _sort_into_buckets(bucket,
                                                       num_experts + 1)
    count, start = count[:num_experts], start[:num_experts]
    expert_blocks = (count + block_size - 1) // block_size
    block_end = ops.cumsum(expert_blocks)
    block_start = block_end - expert_blocks  # [E]

    num_blocks = num_dropless_blocks(num_assignments, num_experts, block_size)
    block_index = ops.arange(num_blocks, dtype="int32")
    # Blocks past the last used one go to the last expert, all empty.
    block_expert = ops.minimum(
        ops.cast(ops.searchsorted(block_end, block_index, side="right"),
                 "int32"), num_experts - 1)
    row_position = (
        ops.expand_dims(
            (block_index - ops.take(block_start, block_expert)) * block_size,
            1)
        + ops.expand_dims(ops.arange(block_size, dtype="int32"), 0))
    slot_filled = ops.less(
        row_position, ops.expand_dims(ops.take(count, block_expert), 1))
    slot_assignment = ops.take(order, ops.clip(
        ops.expand_dims(ops.take(start, block_expert), 1) + row_position,
        0, num_assignments - 1))
    weights = ops.cast(expert_weights, "float32")
    slot_weight = ops.where(
        slot_filled, ops.take(_choice_major(weights), slot_assignment), 0.0)

    slot = ops.where(
        valid,
        ops.take(block_start, ops.minimum(expert, num_experts - 1))
        * block_size + position, 0)
    return DispatchPlan(
        slot_token=ops.mod(slot_assignment, num_tokens),
        slot_weight=slot_weight,
        slot_filled=slot_filled,
        block_expert=block_expert,
        assignment_slot=_token_major(slot, k, num_tokens),
        assignment_weight=ops.where(_token_major(valid, k, num_tokens),
                                    weights, 0.0),
        dropped_fraction=ops.zeros((), "float32"))


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
        slot_filled=slot_filled, block_expert=None, assignment_slot=None,
        assignment_weight=None,
        dropped_fraction=1.0 - ops.mean(
            ops.cast(ops.greater(times_taken, 0.0), "float32")))


def plan_routing(routing, num_tokens, num_experts, capacity_factor,
                 min_capacity=1, num_groups=1, dropless=False,
                 block_size=None):
    """The `DispatchPlan` of a router's result, whichever router made it.

    An `ExpertSlots` result (the router filled expert slots itself) gets
    `plan_expert_choice`. A `RoutingResult` (tokens chose experts) gets
    `plan_dropless` when `dropless`, else `plan_top_k` with
    `expert_capacity(N / num_groups, E, k, capacity_factor, min_capacity)`
    slots per expert and group.
    """
    if isinstance(routing, ExpertSlots):
        if dropless:
            raise ValueError(
                "`dropless` applies to routers where tokens choose experts; "
                "this router fills expert slots itself (it returned "
                "ExpertSlots), so nothing is dropped by capacity. Use "
                "dropless=False.")
        return plan_expert_choice(routing.slot_token, routing.slot_weight,
                                  num_tokens)
    if dropless:
        return plan_dropless(routing.expert_indices, routing.expert_weights,
                             num_experts, block_size)
    if isinstance(num_tokens, int) and num_tokens % num_groups:
        raise ValueError(
            f"The number of token groups, {num_groups} (the MoE layer's "
            "`token_groups` or its router's `num_groups`), must divide the "
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


def _unplaced(grouped):
    return grouped


def dispatch(tokens, plan, place_groups=_unplaced):
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


def combine(expert_outputs, plan, num_tokens=None, place_groups=_unplaced):
    """Each token's gate-weighted sum of its expert outputs: -> [N, d_out].

    Dropped assignments contribute zero; a token with every assignment
    dropped gets a zero vector (a residual connection around the layer
    carries it through). Token-choice plans gather each token's k outputs
    (within its group when the plan has groups); expert-choice plans (no
    `assignment_slot`) sum the weighted slot outputs into their tokens, and
    need `num_tokens`. `place_groups` is as in `dispatch`.
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
        gathered = ops.take(ops.reshape(expert_outputs, (-1, output_dim)),
                            plan.assignment_slot, axis=0)  # [N, k, d]
    return ops.einsum("nk,nkd->nd",
                      ops.cast(plan.assignment_weight, gathered.dtype),
                      gathered)
