"""Hierarchical Mixture-of-Experts (Shazeer et al. 2017, Appendix B)."""

from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import balancing
from sgmoe.layers import dispatch
from sgmoe.layers import token_routing
from sgmoe.layers._grouped_matmul import grouped_matmul
from sgmoe.layers.moe_layer import MoELayer
from sgmoe.layers.routers.noisy_top_k_router import NoisyTopKRouter
from sgmoe.layers.routers.noisy_top_k_router import check_noisy_gate_arguments
from sgmoe.layers.routers.noisy_top_k_router import noisy_top_k


@keras.saving.register_keras_serializable(package="sgmoe")
class HierarchicalMixtureOfExperts(MoELayer):
    """Two-level MoE: a primary gate picks groups, each group is a MoE.

    Shazeer et al. 2017, "Outrageously Large Neural Networks", Appendix B.
    A primary noisy top-k gating network chooses `k_primary` of
    `expert_groups` groups per token; group i is a MoE of its own, with its
    own noisy top-k gating network G_i over `experts_per_group` experts, of
    which it picks `k_secondary`:

        y_H = sum_i sum_j G_primary(x)_i * G_i(x)_j * E_{i,j}(x)

    The balancing losses use the hierarchical importance and load:

        Importance_H(X)_{i,j} = sum_x G_primary(x)_i * G_i(x)_j
        Load_H(X)_{i,j} = Load_primary(X)_i * Load_i(X^(i))_j / |X^(i)|

    where X^(i) are the tokens the primary gate sent to group i; the
    product form gives the primary gate a gradient through the load.
    L_importance = importance_weight * CV(Importance_H)^2 and L_load =
    load_weight * CV(Load_H)^2 over all expert_groups * experts_per_group
    values. Both gates use the paper's noisy top-k (`noisy_top_k`: zero-
    initialised W_g and W_noise, noise only in training, float32).

    Cost stays sparse: the primary dispatch gathers each group's tokens into
    a [expert_groups, C1, d] buffer (C1 = capacity_factor * N * k_primary /
    expert_groups slots), the secondary gates run on those slots only (one
    batched matmul over the groups), and the secondary dispatch gathers
    them into [expert_groups * experts_per_group, C2, d] with C2 =
    capacity_factor * N * k_primary * k_secondary / (expert_groups *
    experts_per_group), the same static-shape sort-and-gather dispatch as
    `MixtureOfExperts`. Group i's experts are rows i * experts_per_group to
    (i + 1) * experts_per_group - 1 of one `FeedForwardExperts` layer, so a
    layout that shards experts along that axis keeps each group's experts
    together. In training, assignments over capacity are dropped at either
    level, as in `MixtureOfExperts`, and counted in `dropped_fraction`;
    X^(i) counts the tokens that reached group i. Outside training (unless
    `eval_capacity_factor` is given), and with `dropless`, neither level
    drops anything: each level's buffer is followed by its overflow rows,
    sorted by group (by expert), on which the secondary gates (the
    experts) run block by block with their own group's (expert's) weights
    (`dispatch.plan_dropless`).

    The monitoring variables are those of `MoELayer`, over all
    expert_groups * experts_per_group experts (group-major):
    `expert_importance` (Importance_H), `expert_load` (Load_H),
    `dropped_fraction` (of the N * k_primary * k_secondary assignments) and
    `auxiliary_losses` {"importance_loss", "load_loss"}.

    Args:
        expert_groups: groups the primary gate chooses among.
        experts_per_group: experts in each group.
        k_primary: groups per token (<= expert_groups).
        k_secondary: experts per token within each chosen group (<=
            experts_per_group).
        expert_hidden_dim: hidden units of each expert (keyword argument).
        capacity_factor, eval_capacity_factor, min_capacity, output_activation,
        output_dim, expert_activation, use_bias, kernel_initializer,
        rematerialize_experts, expert_dropout, dropless, seed: as in
            `MoELayer`; capacity (and dropless dispatch) applies at both
            levels.
        noisy, importance_weight, load_weight, noise_epsilon: as in
            `NoisyTopKRouter`, for both levels' gates.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor [..., d]; all leading axes are one macro-batch.
        training: whether to add gating noise and the balancing losses.

    Returns:
        [..., d_out].

    Example:

    >>> moe = HierarchicalMixtureOfExperts(4, 8, expert_hidden_dim=32)
    >>> tuple(moe(keras.random.normal((2, 5, 16))).shape)
    (2, 5, 16)
    """

    saved_argument_renames = {"num_groups": "expert_groups"}

    def __init__(
        self,
        expert_groups,
        experts_per_group,
        k_primary=2,
        k_secondary=2,
        *,
        expert_hidden_dim,
        noisy=True,
        importance_weight=0.1,
        load_weight=0.1,
        noise_epsilon=1e-2,
        **kwargs,
    ):
        self.expert_groups = _validation.check_positive_int("expert_groups",
                                                            expert_groups)
        self.experts_per_group = _validation.check_positive_int(
            "experts_per_group", experts_per_group)
        self.k_primary = _validation.check_top_k(
            k_primary, self.expert_groups, "k_primary", "expert_groups")
        self.k_secondary = _validation.check_top_k(
            k_secondary, self.experts_per_group, "k_secondary",
            "experts_per_group")
        # The capacity, expert and base layer arguments (see MoELayer).
        super().__init__(self.expert_groups * self.experts_per_group,
                         expert_hidden_dim, **kwargs)
        (self.noisy, self.importance_weight, self.load_weight,
         self.noise_epsilon) = check_noisy_gate_arguments(
            noisy, importance_weight, load_weight, noise_epsilon)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        super().build(input_shape)
        gate_shapes = {
            "primary": (self.input_dim, self.expert_groups),
            "secondary": (self.expert_groups, self.input_dim,
                          self.experts_per_group),
        }
        # Appendix A: gating weights start at zero. Float32 whatever the
        # dtype policy: the top-k and softmax are sensitive to rounding.
        for level, shape in gate_shapes.items():
            for kind in ("gate", "noise") if self.noisy else ("gate",):
                setattr(self, f"{level}_w_{kind}", self.add_weight(
                    name=f"{level}_w_{kind}", shape=shape,
                    initializer="zeros", dtype="float32", autocast=False))
        self.add_statistics(NoisyTopKRouter.loss_names)

    def call(self, inputs, training=None):
        tokens, leading_shape = self.flatten_tokens(inputs)
        num_tokens = ops.shape(tokens)[0]
        capacity_factor = self.call_capacity_factor(training)
        noisy = self.noisy and bool(training)
        groups, per_group = self.expert_groups, self.experts_per_group

        # Primary gate: tokens [N, d] -> groups: a buffer [G, C1, d], and
        # with dropless dispatch overflow rows [R1, d] sorted by group.
        x = ops.cast(tokens, "float32")
        primary = noisy_top_k(
            ops.matmul(x, self.primary_w_gate), self.k_primary,
            noise_logits=(ops.matmul(x, self.primary_w_noise) if noisy
                          else None),
            noise_epsilon=self.noise_epsilon,
            seed_generator=self.seed_generator)
        primary_plan = self._plan(primary.expert_indices,
                                  primary.expert_weights,
                                  groups, num_tokens, capacity_factor)
        group_tokens = dispatch.dispatch(tokens, primary_plan)
        slots = _group_slots(group_tokens, primary_plan, tokens)

        # Secondary gates: group i's network on group i's slots only.
        slot_x = ops.cast(slots.inputs, "float32")
        secondary = noisy_top_k(
            self._group_logits(slot_x, self.secondary_w_gate, slots),
            self.k_secondary,
            noise_logits=(self._group_logits(slot_x, self.secondary_w_noise,
                                             slots) if noisy else None),
            noise_epsilon=self.noise_epsilon,
            seed_generator=self.seed_generator)
        # Expert j of group i is expert i * experts_per_group + j; empty
        # slots route to no expert.
        expert_indices = ops.where(
            ops.expand_dims(slots.filled, -1),
            secondary.expert_indices
            + ops.expand_dims(slots.group * per_group, -1),
            self.num_experts)
        secondary_plan = self._plan(
            expert_indices, secondary.expert_weights, self.num_experts,
            num_tokens * self.k_primary, capacity_factor,
            max_capacity=ops.shape(group_tokens)[1])
        slot_outputs = self.run_experts(slots.inputs, secondary_plan,
                                        training)
        outputs = _combine_groups(slot_outputs, primary_plan, group_tokens)
        outputs = self.output_activation(outputs)

        importance, load = self._importance_and_load(
            primary, secondary, slots, expert_indices)
        auxiliary_losses = balancing.importance_and_load_losses(
            importance, load, self.importance_weight, self.load_weight)
        if training:
            self.add_loss(sum(auxiliary_losses.values()))
        # Kept assignments over all N * k_primary * k_secondary.
        reached_groups = ops.sum(ops.cast(slots.filled, "float32"))
        kept = ((1.0 - secondary_plan.dropped_fraction) * reached_groups
                * self.k_secondary)
        total = ops.cast(num_tokens * self.k_primary * self.k_secondary,
                         "float32")
        dropped_fraction = (total - kept) / total
        # Per expert: the second level's dispatch (assignments a group's
        # capacity dropped reach no expert; they count in
        # dropped_fraction only).
        self.record_statistics(importance, load, dropped_fraction,
                               auxiliary_losses, secondary_plan, training)
        return ops.reshape(outputs, leading_shape + (outputs.shape[-1],))

    def route_flat(self, tokens):
        # Both levels without noise, as `call` routes in inference. The
        # second level's logits are computed for every group: [N, G, E_g].
        x = ops.cast(tokens, "float32")
        primary = noisy_top_k(ops.matmul(x, self.primary_w_gate),
                              self.k_primary)
        logits = ops.einsum("nd,gde->nge", x, self.secondary_w_gate)
        logits = ops.take_along_axis(
            logits, ops.expand_dims(primary.expert_indices, -1), axis=1)
        secondary = noisy_top_k(logits, self.k_secondary)  # [N, k1, k2]
        indices = (ops.expand_dims(primary.expert_indices, -1)
                   * self.experts_per_group + secondary.expert_indices)
        weights = (ops.expand_dims(primary.expert_weights, -1)
                   * secondary.expert_weights)
        width = self.k_primary * self.k_secondary
        return token_routing.from_top_k(ops.reshape(indices, (-1, width)),
                                        ops.reshape(weights, (-1, width)),
                                        self.num_experts)

    def _plan(self, indices, weights, num_experts, tokens, capacity_factor,
              max_capacity=None):
        """Dropless (no capacity factor) or capacity dispatch of a level."""
        if capacity_factor is None:
            return dispatch.plan_dropless(indices, weights, num_experts)
        capacity = dispatch.expert_capacity(
            tokens, num_experts, indices.shape[1], capacity_factor,
            self.min_capacity)
        if max_capacity is not None:
            capacity = (min(capacity, max_capacity)
                        if isinstance(capacity, int)
                        and isinstance(max_capacity, int)
                        else ops.minimum(capacity, max_capacity))
        return dispatch.plan_top_k(indices, weights, num_experts, capacity)

    def _group_logits(self, slot_x, kernel, slots):
        """Each slot's logits under its own group's kernel [G, d, E_g]."""
        num_buffer = slots.buffer_shape[0] * slots.buffer_shape[1]
        buffer_x = ops.reshape(slot_x[:num_buffer],
                               slots.buffer_shape + (slot_x.shape[-1],))
        if slots.blocks is None:
            logits = ops.matmul(buffer_x, kernel)
            return ops.reshape(logits, (-1, kernel.shape[-1]))
        logits, row_logits = grouped_matmul(buffer_x, slot_x[num_buffer:],
                                            kernel, slots.blocks)
        return ops.concatenate(
            [ops.reshape(logits, (-1, kernel.shape[-1])), row_logits])

    def _importance_and_load(self, primary, secondary, slots,
                             expert_indices):
        """Importance_H and Load_H [G * E_g], from the gates of both levels."""
        groups, per_group = self.expert_groups, self.experts_per_group
        filled = ops.cast(slots.filled, "float32")  # [S]
        # G_primary(x)_i * G_i(x)_j for every (slot, choice); 0 for empty.
        pair_weights = (ops.expand_dims(slots.weight, 1)
                        * secondary.expert_weights)
        importance = balancing.count_per_expert(
            ops.minimum(expert_indices, self.num_experts - 1),
            self.num_experts, weights=pair_weights)

        if primary.probability_in_top_k is not None:
            primary_load = ops.sum(primary.probability_in_top_k, axis=0)
        else:
            primary_load = balancing.count_per_expert(
                primary.expert_indices, groups)
        if secondary.probability_in_top_k is not None:
            secondary_load = ops.segment_sum(
                secondary.probability_in_top_k * ops.expand_dims(filled, -1),
                slots.group, num_segments=groups)  # [G, E_g]
        else:
            secondary_load = ops.reshape(balancing.count_per_expert(
                expert_indices, self.num_experts + 1)[:self.num_experts],
                (groups, per_group))
        tokens_in_group = ops.maximum(
            ops.segment_sum(filled, slots.group, num_segments=groups), 1.0)
        load = (ops.expand_dims(primary_load / tokens_in_group, 1)
                * secondary_load)
        return importance, ops.reshape(load, (-1,))

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, HierarchicalMixtureOfExperts)}


class _GroupSlots(NamedTuple):
    """The primary level's output, as one list of slots [S] for the
    secondary gates: the group buffer's G * C1 slots, then (dropless) its
    overflow rows."""

    inputs: Any  # [S, d]
    group: Any  # int32 [S]
    filled: Any  # bool [S]
    weight: Any  # float32 [S], the primary gate value; 0 if empty
    buffer_shape: Any  # (G, C1)
    blocks: Any  # the overflow's `Blocks`, or None


def _group_slots(group_tokens, plan, tokens):
    groups, capacity = ops.shape(group_tokens)[0], ops.shape(group_tokens)[1]
    slot_group = ops.repeat(ops.arange(groups, dtype="int32"), capacity)
    parts = [(ops.reshape(group_tokens, (-1, group_tokens.shape[-1])),
              slot_group, ops.reshape(plan.slot_filled, (-1,)),
              ops.reshape(plan.slot_weight, (-1,)))]
    overflow = plan.overflow
    if overflow is not None:
        rows, row_expert, _ = dispatch.dispatch_overflow(tokens, plan)
        parts.append((rows, row_expert, overflow.row_used,
                      overflow.row_weight))
    inputs, group, filled, weight = (ops.concatenate(list(part), axis=0)
                                     for part in zip(*parts))
    return _GroupSlots(inputs, group, filled, weight, (groups, capacity),
                       None if overflow is None else overflow.blocks)


def _combine_groups(slot_outputs, plan, group_tokens):
    """Slot outputs [S, d] back to tokens through the primary plan."""
    groups, capacity = ops.shape(group_tokens)[0], ops.shape(group_tokens)[1]
    buffer_outputs = ops.reshape(slot_outputs[:groups * capacity],
                                 (groups, capacity, slot_outputs.shape[-1]))
    return dispatch.combine(buffer_outputs, plan,
                            overflow_outputs=slot_outputs[groups * capacity:])
