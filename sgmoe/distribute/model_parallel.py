"""A ready `keras.distribution.ModelParallel` for sgmoe models (JAX)."""

import keras

from sgmoe.distribute.device_mesh import device_mesh
from sgmoe.distribute.expert_layout_map import expert_layout_map
from sgmoe.distribute.mesh_spec import BATCH_AXIS
from sgmoe.distribute.mesh_spec import MODEL_AXIS

JAX_ONLY_MESSAGE = (
    "keras.distribution shards only on the JAX backend: on TensorFlow its "
    "ModelParallel is a prototype that silently places every weight on one "
    "device, so expert weights would not be sharded. Run with "
    "KERAS_BACKEND=jax to shard experts over the \"model\" axis; on "
    "TensorFlow, sgmoe.distribute.distribution_for_mesh(\"batch:N\") gives "
    "data parallelism through tf.distribute.")


def model_parallel(mesh, devices=None, expert_axis=MODEL_AXIS):
    """Data-parallel gates, model-parallel experts: a `ModelParallel`.

    The batch is split over the mesh's "batch" axis, expert weights (and
    their optimizer slots) along their expert axis over "model"
    (`expert_layout_map`), everything else is replicated. Create the model
    and its optimizer under `distribution.scope()`, or after
    `keras.distribution.set_distribution(distribution)`; `fit` then splits
    each batch over "batch" (and over processes after
    `jax.distributed.initialize`), and XLA's SPMD partitioner (GSPMD, the
    engine GShard was built on) inserts the collectives.

    The gates are data-parallel: each device routes its own share of the
    batch (routing needs only per-token maxima, so no logits move; the
    balancing losses add up [E] vectors over devices). Each
    `MixtureOfExperts` splits its macro-batch into one token group per
    "batch" shard (its `token_groups`, GShard's groups), with capacity per
    group, so each device dispatches its own tokens to its own experts
    without moving them; combining the k outputs of each token is one
    reduction over "model" of the device's N / B * k * d values (B the
    "batch" size). The computation equals the single-device one with
    `token_groups` = B (the same loss and updates up to float rounding);
    with `token_groups` = 1 on one device, only which overflowing
    assignments are dropped differs. `HierarchicalMixtureOfExperts` and
    dropless dispatch (inference without an `eval_capacity_factor`, or
    `dropless=True`) or expert-choice dispatch route the whole global batch
    as one group.

    JAX backend only (see `distribution_for_mesh` for TensorFlow).

    Args:
        mesh: a spec, "batch:2,model:4" or {"batch": 2, "model": 4}, or a
            `keras.distribution.DeviceMesh` with the axes "batch" and
            "model".
        devices: devices of a spec's mesh (see `device_mesh`); default all.
        expert_axis: the axis expert weights are split over: "model" (the
            default), or "batch" for the paper's layout, where every device
            has its own batch share and its own experts and the dispatch is
            an all-to-all (see `expert_layout_map`; use a mesh "batch:N").

    Returns:
        A `keras.distribution.ModelParallel` with batch_dim_name "batch".
        Creating an expert weight under it raises a ValueError naming the
        weight when the "model" axis does not divide its number of experts.

    Raises:
        ValueError: naming `mesh`, for an invalid spec, a spec that does
            not match the device count, or a backend other than JAX.

    Example:

    distribution = model_parallel("batch:2,model:4")  # 8 devices
    with distribution.scope():
        model = MoELanguageModel.from_preset("tiny_moe_h")
        model.compile(optimizer="adam")
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"`mesh`={mesh!r} asks for keras.distribution sharding on the "
            f"{keras.backend.backend()} backend. " + JAX_ONLY_MESSAGE)
    if not isinstance(mesh, keras.distribution.DeviceMesh):
        mesh = device_mesh(mesh, devices)
    return _ExpertModelParallel(
        layout_map=expert_layout_map(mesh, expert_axis),
        batch_dim_name=BATCH_AXIS, expert_axis=expert_axis)


class _ExpertModelParallel(keras.distribution.ModelParallel):
    """ModelParallel that names an expert weight the mesh cannot split."""

    def __init__(self, *, expert_axis, **kwargs):
        super().__init__(**kwargs)
        self.expert_axis = expert_axis

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        if not isinstance(layout, keras.distribution.TensorLayout):
            return layout
        expert_axis = self.expert_axis
        axis_size = self.device_mesh.shape[
            self.device_mesh.axis_names.index(expert_axis)]
        for axis, name in enumerate(layout.axes):
            if name == expert_axis and variable.shape[axis] % axis_size:
                raise ValueError(
                    f"The expert weight {variable.path!r} of shape "
                    f"{tuple(variable.shape)} has {variable.shape[axis]} "
                    f"experts, which the mesh's \"{expert_axis}\" axis of "
                    f"size {axis_size} does not divide. Use a number of "
                    f"experts divisible by the \"{expert_axis}\" axis (for "
                    "a hierarchical MoE, num_groups * experts_per_group), or "
                    f"a smaller \"{expert_axis}\" axis in `mesh`.")
        return layout
