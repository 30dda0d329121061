"""Layout rules: expert weights split along the expert axis over "model"."""

import keras

from sgmoe.distribute.mesh_spec import BATCH_AXIS
from sgmoe.distribute.mesh_spec import MESH_AXES
from sgmoe.distribute.mesh_spec import MODEL_AXIS
from sgmoe.distribute.mesh_spec import check_expert_axis
from sgmoe.layers import feed_forward_experts
from sgmoe.layers import moe_layer


def _one_of(names):
    return "(" + "|".join(names) + ")"


# The experts of every sgmoe MoE layer are a `FeedForwardExperts` named
# `moe_layer.EXPERTS`; a standalone one keeps its default name,
# "feed_forward_experts" with a numeric suffix. A Residual-MoE's
# "dense_expert" (one expert) does not match and stays replicated. The
# names come from the layers, so renaming a part there renames it here.
_EXPERT_LAYER = rf"(.*/)?(feed_forward_)?{moe_layer.EXPERTS}(_[0-9]+)?"

EXPERT_KERNEL_PATTERN = (_EXPERT_LAYER + "/"
                         + _one_of(feed_forward_experts.KERNEL_NAMES))
EXPERT_BIAS_PATTERN = (_EXPERT_LAYER + "/"
                       + _one_of(feed_forward_experts.BIAS_NAMES))
# Activations placed only with expert_axis="batch" (see below).
EXPERT_BUFFER_PATTERN = (_EXPERT_LAYER + "/" + _one_of(
    (moe_layer.EXPERT_INPUT, moe_layer.EXPERT_OUTPUT)))
TOKEN_GROUPS_PATTERN = r"(.*/)?[^/]+/" + moe_layer.TOKEN_GROUPS


def expert_layout_map(mesh, expert_axis=MODEL_AXIS):
    """The `LayoutMap` of sgmoe models: experts split, the rest replicated.

    GShard's layout (Lepikhin et al. 2020; mesh-tensorflow's "experts" ->
    "model" rule): the stacked expert weights of every `FeedForwardExperts`
    layer (`kernel_in` [E, d, h], `kernel_out` [E, h, d], `bias_in` [E, h],
    `bias_out` [E, d]) are split along their expert axis E over the "model"
    axis, so device m of a model group holds experts m * E / M ... (m + 1) *
    E / M - 1, and so do their optimizer slots (Keras and `FactoredAdam` give
    a slot its variable's layout). A hierarchical MoE stores group i's
    experts as rows i * E_g ... (i + 1) * E_g - 1 of one expert layer, so
    its G groups lie along the "model" axis: with G = M, position i holds
    group i; with G a multiple of M, G / M whole groups each.

    With this default layout activations get no rule: XLA's sharding
    propagation places them. With
    the token groups `MixtureOfExperts` uses under a distribution (one per
    "batch" shard, see its `token_groups`), each device gathers its own
    tokens into its experts' slots of its group, so the expert buffer
    [E, G * C, d] ends up split over ("model", "batch") with no tokens
    moved, the expert FLOPs are divided over every device, and the combine
    is one reduction of N / B * k * d values per device over "model" (B the
    "batch" size). Everything else (embeddings, LSTMs, routers and gates, a
    Residual-MoE's dense expert, the softmax) matches no rule and is
    replicated; `keras.distribution.ModelParallel` splits the batch over
    "batch".

    With `expert_axis="batch"`, the paper's own layout (§3.1): every device
    holds its own share of the batch and its own experts, E / B of them,
    each expert on one device only, so no expert gradient is summed over
    devices. Token groups are then split over "batch" and the expert
    buffer over its expert axis on "batch" too (rules for
    "<moe>/token_groups" and "<experts>/input", which the MoE layers look
    up, and "<experts>/output", which Keras looks up), so XLA moves each device's dispatched tokens to
    their experts' devices and back with all-to-alls of its N * k *
    capacity_factor * d / B values. Use it with a "batch"-only mesh
    ("batch:8"); a "model" axis then only replicates.

    E must be divisible by the size of the expert axis. Dropless dispatch
    (`dropless=True`, and inference without an `eval_capacity_factor`)
    reads each overflow block's expert weights by index, so under expert
    sharding the overflow moves weights rather than tokens; its buffer
    part is laid out like capacity dispatch.

    Args:
        mesh: a `keras.distribution.DeviceMesh` with the axes "batch" and
            "model" (from `device_mesh`).
        expert_axis: the mesh axis expert weights are split over, "model"
            (the default) or "batch".

    Returns:
        A `keras.distribution.LayoutMap`.
    """
    if not isinstance(mesh, keras.distribution.DeviceMesh) or any(
            axis not in mesh.axis_names for axis in MESH_AXES):
        raise ValueError(
            "`mesh` must be a keras.distribution.DeviceMesh with the axes "
            f"{list(MESH_AXES)} (see sgmoe.distribute.device_mesh), received "
            f"mesh={mesh!r}.")
    check_expert_axis(expert_axis)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[EXPERT_KERNEL_PATTERN] = (expert_axis, None, None)
    layout_map[EXPERT_BIAS_PATTERN] = (expert_axis, None)
    if expert_axis == BATCH_AXIS:
        layout_map[EXPERT_BUFFER_PATTERN] = (BATCH_AXIS, None, None)
        layout_map[TOKEN_GROUPS_PATTERN] = (BATCH_AXIS, None, None)
    return layout_map
