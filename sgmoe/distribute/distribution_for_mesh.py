"""The distribution a device-mesh spec asks for, on either backend."""

import keras

from sgmoe.distribute.mesh_spec import BATCH_AXIS
from sgmoe.distribute.mesh_spec import MODEL_AXIS
from sgmoe.distribute.mesh_spec import check_expert_axis
from sgmoe.distribute.mesh_spec import format_mesh_spec
from sgmoe.distribute.mesh_spec import parse_mesh_spec
from sgmoe.distribute.model_parallel import JAX_ONLY_MESSAGE
from sgmoe.distribute.model_parallel import model_parallel


def distribution_for_mesh(mesh, multi_host=False, tpu=None,
                           expert_axis=MODEL_AXIS):
    """The distribution that runs a model on `mesh`; None without one.

    On the JAX backend: `model_parallel(mesh)`, also set as the global
    distribution, so `fit` splits the batch over "batch" and expert weights
    are split over "model". With `multi_host`, `jax.distributed.initialize`
    runs first (through `keras.distribution.initialize`: on a Cloud TPU pod
    slice it finds the other hosts itself; elsewhere it reads the
    KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and
    KERAS_DISTRIBUTION_PROCESS_ID environment variables), and the mesh
    spans every process's devices.

    On the TensorFlow backend, where `keras.distribution` does not shard,
    only data parallelism ("batch:N") is supported, through a
    `tf.distribute` strategy with N replicas: `TPUStrategy` when `tpu` is
    given, `MultiWorkerMirroredStrategy` (configured by TF_CONFIG) with
    `multi_host`, else `MirroredStrategy` over the local GPUs (CPUs if
    none). Each replica then runs the MoE layers on its own part of the
    batch (routing, capacity and balancing losses per replica), with
    experts replicated. Asking for "model" > 1 raises a ValueError: expert
    sharding on TensorFlow is not implemented, and it is never silently
    skipped.

    Either way, build and compile the model under `distribution.scope()`.

    Args:
        mesh: a spec such as "batch:2,model:4" (see `parse_mesh_spec`);
            None or "" for no distribution.
        multi_host: whether the run spans several processes (hosts).
        expert_axis: the axis expert weights are split over on JAX,
            "model" or "batch" (the paper's layout; see `model_parallel`).
        tpu: TensorFlow only: the TPU to connect to (a name or grpc://
            address, "local" on a TPU VM), for `TPUStrategy`. JAX finds TPUs
            itself.

    Returns:
        None without a mesh; a `keras.distribution.ModelParallel` on JAX; a
        `tf.distribute.Strategy` on TensorFlow.

    Raises:
        ValueError: naming `mesh`, for an invalid spec, one that does not
            match the device count, or "model" > 1 on TensorFlow.

    Example:

    distribution = distribution_for_mesh("batch:2")
    with distribution.scope() if distribution else contextlib.nullcontext():
        model = MoELanguageModel.from_preset("small_moe")
        model.compile(optimizer="adam")
    """
    if mesh is None or (isinstance(mesh, str) and not mesh.strip()):
        return None
    sizes = parse_mesh_spec(mesh)
    check_expert_axis(expert_axis)
    backend = keras.backend.backend()
    if backend == "jax":
        if multi_host:
            keras.distribution.initialize()
        distribution = model_parallel(sizes, expert_axis=expert_axis)
        keras.distribution.set_distribution(distribution)
        return distribution
    if backend != "tensorflow":
        raise ValueError(
            f"`mesh`={mesh!r} needs the JAX or TensorFlow backend, the "
            f"backend is {backend}.")
    if expert_axis == BATCH_AXIS and sizes[BATCH_AXIS] > 1:
        raise ValueError(
            f"`expert_axis`=\"batch\" with `mesh`={mesh!r} asks for expert "
            "sharding on the TensorFlow backend. " + JAX_ONLY_MESSAGE)
    if sizes[MODEL_AXIS] > 1:
        raise ValueError(
            f"`mesh`={mesh!r} asks for expert sharding (\"model\" axis of "
            f"size {sizes[MODEL_AXIS]}) on the TensorFlow backend. "
            + JAX_ONLY_MESSAGE + " Use a mesh \"batch:N\" on TensorFlow.")
    if tpu is not None and multi_host:
        raise ValueError(
            "`tpu` and `multi_host` are exclusive on TensorFlow: a TPU "
            "strategy spans the TPU's hosts itself; received "
            f"tpu={tpu!r}, multi_host=True.")
    strategy = _data_parallel_strategy(multi_host, tpu)
    if strategy.num_replicas_in_sync != sizes[BATCH_AXIS]:
        raise ValueError(
            f"`mesh` {format_mesh_spec(sizes)} asks for "
            f"{sizes[BATCH_AXIS]} data-parallel replicas, but the "
            f"{type(strategy).__name__} has "
            f"{strategy.num_replicas_in_sync} (one per device): the batch "
            "size of the mesh must be the number of devices. Received "
            f"mesh={mesh!r}.")
    return strategy


def _data_parallel_strategy(multi_host, tpu):
    import tensorflow as tf

    if tpu is not None:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if multi_host:
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = (tf.config.list_logical_devices("GPU")
               or tf.config.list_logical_devices("CPU"))
    return tf.distribute.MirroredStrategy([device.name for device in devices])
