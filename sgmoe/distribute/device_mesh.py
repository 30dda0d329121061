"""A `keras.distribution.DeviceMesh` with the axes ("batch", "model")."""

import math

import keras

from sgmoe.distribute.mesh_spec import MESH_AXES
from sgmoe.distribute.mesh_spec import format_mesh_spec
from sgmoe.distribute.mesh_spec import parse_mesh_spec


def device_mesh(mesh, devices=None):
    """The 2-D device mesh of a spec: shape (batch, model), axis names
    ("batch", "model").

    The mesh must use every device: its size (batch * model) must equal the
    number of devices. With `devices` None it takes all of
    `keras.distribution.list_devices()` (every process's devices after
    `jax.distributed.initialize`); on the JAX backend they are arranged by
    `jax.experimental.mesh_utils.create_device_mesh`, which puts the "model"
    axis, whose collectives move the dispatched tokens, on neighbouring
    chips of a TPU slice's interconnect.

    Args:
        mesh: a spec, "batch:2,model:4" or {"batch": 2, "model": 4} (see
            `parse_mesh_spec`).
        devices: optional list of devices (names such as "cpu:0", or JAX
            devices), in mesh order.

    Returns:
        A `keras.distribution.DeviceMesh`.

    Raises:
        ValueError: naming `mesh`, for an invalid spec or one whose size is
            not the number of devices.

    Example:

    mesh = device_mesh("batch:2,model:4")  # 8 devices
    mesh.shape, mesh.axis_names
    # ((2, 4), ('batch', 'model'))
    """
    sizes = parse_mesh_spec(mesh)
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    if devices is None:
        devices = _arranged_devices(shape)
    else:
        devices = list(devices)
    count = len(devices) if isinstance(devices, list) else devices.size
    if math.prod(shape) != count:
        raise ValueError(
            f"`mesh` {format_mesh_spec(sizes)} has {math.prod(shape)} "
            f"devices, but there are {count}: the product of the axis sizes "
            "must be the number of devices. (On one CPU host, JAX makes N "
            "devices with XLA_FLAGS=--xla_force_host_platform_device_count=N "
            f"set before it starts.) Received mesh={mesh!r}.")
    return keras.distribution.DeviceMesh(shape, MESH_AXES, devices)


def _arranged_devices(shape):
    """All devices, as an array of `shape` on JAX (topology-aware), else a
    list in `list_devices` order."""
    devices = keras.distribution.list_devices()
    if keras.backend.backend() != "jax" or math.prod(shape) != len(devices):
        return devices
    import jax
    from jax.experimental import mesh_utils

    # Same platform as list_devices: accelerators if any, else CPUs.
    platform = devices[0].split(":")[0]
    try:
        return mesh_utils.create_device_mesh(
            shape, devices=jax.devices(platform))
    except (ValueError, NotImplementedError, AssertionError):
        # Shapes the topology-aware layout does not support (e.g. an axis
        # that cuts across a TPU slice oddly): plain device order.
        return devices
