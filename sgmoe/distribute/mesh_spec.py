"""Mesh specs ("batch:2,model:4"): named mesh axes and their sizes."""

import re

BATCH_AXIS = "batch"
MODEL_AXIS = "model"
MESH_AXES = (BATCH_AXIS, MODEL_AXIS)

_SIZE = re.compile(r"^[0-9]+$")


def parse_mesh_spec(mesh):
    """Axis sizes of a mesh spec: "batch:2,model:4" -> {"batch": 2, "model": 4}.

    A spec is comma-separated `axis:size` entries over the axes "batch"
    (data parallelism: the batch is split over it, every other weight is
    replicated along it) and "model" (model parallelism: expert weights are
    split along their expert axis over it). An axis left out has size 1, so
    "batch:8" is pure data parallelism and "model:8" puts every expert group
    on its own device with the whole batch on each. A dict {axis: size} is
    checked the same way.

    Args:
        mesh: the spec, a string or a dict.

    Returns:
        A dict {"batch": size, "model": size}, in that order.

    Raises:
        ValueError: naming `mesh`, for malformed text, an unknown or
            repeated axis, or a size that is not a positive integer.

    Example:

    >>> parse_mesh_spec("batch:2,model:4")
    {'batch': 2, 'model': 4}
    >>> parse_mesh_spec("model:8")
    {'batch': 1, 'model': 8}
    """
    expected = ('expected comma-separated "axis:size" entries over the axes '
                f"{list(MESH_AXES)} with positive integer sizes, e.g. "
                '"batch:2,model:4"')
    if isinstance(mesh, dict):
        entries = list(mesh.items())
    elif isinstance(mesh, str) and mesh.strip():
        entries = []
        for entry in mesh.split(","):
            name, colon, size = entry.partition(":")
            if not colon:
                raise ValueError(f"`mesh` entry {entry.strip()!r} has no "
                                 f"size: {expected}; received mesh={mesh!r}.")
            entries.append((name.strip(), size.strip()))
    else:
        raise ValueError(f"`mesh` must be a non-empty string or a dict: "
                         f"{expected}; received mesh={mesh!r}.")
    sizes = {}
    for name, size in entries:
        if name not in MESH_AXES:
            raise ValueError(f"`mesh` has an unknown axis {name!r}: "
                             f"{expected}; received mesh={mesh!r}.")
        if name in sizes:
            raise ValueError(f"`mesh` names the axis {name!r} twice: "
                             f"{expected}; received mesh={mesh!r}.")
        if isinstance(size, str) and _SIZE.match(size):
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`mesh` axis {name!r} has size {size!r}, not a "
                             f"positive integer: {expected}; received "
                             f"mesh={mesh!r}.")
        sizes[name] = size
    return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def check_expert_axis(expert_axis):
    """`expert_axis` if it names a mesh axis, else a ValueError naming it."""
    if expert_axis not in MESH_AXES:
        raise ValueError(
            f"`expert_axis` must be one of {list(MESH_AXES)}, received "
            f"expert_axis={expert_axis!r}.")
    return expert_axis


def format_mesh_spec(sizes):
    """The inverse of `parse_mesh_spec`: {"batch": 2, "model": 4} ->
    "batch:2,model:4"."""
    sizes = parse_mesh_spec(sizes)
    return ",".join(f"{axis}:{sizes[axis]}" for axis in MESH_AXES)
