"""Sparse, static-shape dispatch of tokens to experts and back.

Tokens are gathered into an [experts, capacity, d] buffer by sorting the
(token, choice) assignments by expert, and gathered back by slot index. Data
movement is O(tokens * k * d) and the buffer holds capacity * experts slots
(about capacity_factor * tokens * k), so nothing grows with tokens * experts:
unlike the one-hot dispatch/combine einsums of GShard-style code, whose cost
is tokens * experts * capacity * d, and unlike running every expert on every
token. Every shape is a function of static sizes, so it compiles under XLA
(`jit_compile=True` on TensorFlow, `jax.jit`).
"""

import math
from typing import Any
from typing import NamedTuple

from keras import ops

from sgmoe import _validation

# Sort keys are expert * assignments + assignment, held in int32.
_MAX_SORT_KEY = 2**31 - 1


class DispatchPlan(NamedTuple):
    """Where each (token, choice) assignment goes, for a fixed capacity.

    Attributes:
        slot_token: int32 [E, C], the token held by each buffer slot (an
            arbitrary valid index for empty slots).
        slot_filled: bool [E, C], whether the slot holds a token.
        assignment_slot: int32 [N, k], the flat slot e * C + c of each
            assignment (clipped into range for dropped ones).
        assignment_kept: bool [N, k], false where the expert was over capacity.
    """

    slot_token: Any
    slot_filled: Any
    assignment_slot: Any
    assignment_kept: Any


def expert_capacity(num_tokens, num_experts, k, capacity_factor):
    """Slots per expert: ceil(capacity_factor * tokens * k / experts).

    At least 1, and at most `num_tokens` (a token picks an expert at most
    once, so more slots could never be filled). `num_tokens` is a Python int
    when the shape is static (JAX, or TensorFlow with a fixed batch) and a
    scalar tensor otherwise; XLA folds the latter into a constant when it
    compiles for concrete shapes.
    """
    capacity_factor = _validation.check_positive_float(
        "capacity_factor", capacity_factor)
    if isinstance(num_tokens, int):
        capacity = math.ceil(capacity_factor * num_tokens * k / num_experts)
        return max(1, min(num_tokens, capacity))
    capacity = ops.cast(
        ops.ceil(capacity_factor * ops.cast(num_tokens, "float32") * k
                 / num_experts), "int32")
    return ops.minimum(ops.maximum(capacity, 1), num_tokens)


def plan_dispatch(expert_indices, num_experts, capacity):
    """Assigns each (token, choice) a slot in its expert's buffer.

    Priority within an expert goes first by choice rank, then by token
    order: every token's first choice is served before any token's second
    choice, so overflow drops the least preferred assignments.

    Args:
        expert_indices: int [N, k] with static k.
        num_experts: E.
        capacity: C, slots per expert, from `expert_capacity`.

    Returns:
        A `DispatchPlan`.
    """
    k = expert_indices.shape[1]
    num_tokens = ops.shape(expert_indices)[0]
    num_assignments = num_tokens * k
    if (isinstance(num_assignments, int)
            and num_experts * num_assignments > _MAX_SORT_KEY):
        raise ValueError(
            f"Too many token assignments ({num_tokens} tokens x k={k}) for "
            f"num_experts={num_experts} in one dispatch: experts * tokens * k "
            f"must stay below 2**31. Split the macro-batch.")
    # Choice-major order: assignment a = j * N + n is choice j of token n.
    assignment_expert = ops.reshape(
        ops.transpose(ops.cast(expert_indices, "int32")), (-1,))
    assignment = ops.arange(num_assignments, dtype="int32")
    # Unique keys make any sort stable: by expert, then by assignment.
    order = ops.cast(
        ops.argsort(assignment_expert * num_assignments + assignment),
        "int32")
    sorted_expert = ops.take(assignment_expert, order)

    tokens_per_expert = ops.cast(
        ops.segment_sum(ops.ones_like(assignment_expert), assignment_expert,
                        num_segments=num_experts), "int32")
    expert_start = ops.cumsum(tokens_per_expert) - tokens_per_expert  # [E]
    sorted_position = assignment - ops.take(expert_start, sorted_expert)
    position = ops.scatter(ops.expand_dims(order, -1), sorted_position,
                           (num_assignments,))
    kept = ops.less(position, capacity)
    slot = assignment_expert * capacity + ops.minimum(position, capacity - 1)

    slot_index = ops.arange(capacity, dtype="int32")
    slot_filled = ops.less(ops.expand_dims(slot_index, 0),
                           ops.expand_dims(tokens_per_expert, 1))  # [E, C]
    slot_assignment = ops.minimum(
        ops.expand_dims(expert_start, 1) + ops.expand_dims(slot_index, 0),
        num_assignments - 1)
    slot_token = ops.mod(ops.take(order, slot_assignment), num_tokens)

    def token_major(values):  # [k * N] -> [N, k]
        return ops.transpose(ops.reshape(values, (k, num_tokens)))

    return DispatchPlan(slot_token=slot_token, slot_filled=slot_filled,
                        assignment_slot=token_major(slot),
                        assignment_kept=token_major(kept))


def dispatch(tokens, plan):
    """Gathers tokens [N, d] into the expert buffer [E, C, d]; empty slots are 0."""
    gathered = ops.take(tokens, plan.slot_token, axis=0)
    return ops.where(ops.expand_dims(plan.slot_filled, -1), gathered,
                     ops.zeros_like(gathered))


def combine(expert_outputs, plan, expert_weights):
    """Weighted sum of each token's kept expert outputs: [E, C, d] -> [N, d].

    Dropped assignments contribute zero; a token with every assignment
    dropped gets a zero vector (a residual connection around the layer
    carries it through).
    """
    flat_outputs = ops.reshape(expert_outputs, (-1, expert_outputs.shape[-1]))
    gathered = ops.take(flat_outputs, plan.assignment_slot, axis=0)  # [N, k, d]
    weights = ops.where(plan.assignment_kept,
                        ops.cast(expert_weights, gathered.dtype),
                        ops.zeros((), dtype=gathered.dtype))
    return ops.einsum("nk,nkd->nd", weights, gathered)
