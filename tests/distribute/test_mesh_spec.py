"""Mesh specs, device meshes, layout rules and the TensorFlow behaviour of
`--mesh` (in the test process: no sharding needed)."""

import keras
import pytest

from sgmoe.distribute import device_mesh
from sgmoe.distribute import distribution_for_mesh
from sgmoe.distribute import expert_layout_map
from sgmoe.distribute import model_parallel
from sgmoe.distribute import parse_mesh_spec

TENSORFLOW = keras.backend.backend() == "tensorflow"
EIGHT_DEVICES = [f"cpu:{i}" for i in range(8)]


# Loops rather than parametrized tests: the suite's per-test teardown
# (keras.backend.clear_session) costs more than these checks.
VALID_SPECS = [
    ("batch:2,model:4", {"batch": 2, "model": 4}),
    ("model:4,batch:2", {"batch": 2, "model": 4}),
    (" batch : 8 ", {"batch": 8, "model": 1}),
    ("model:8", {"batch": 1, "model": 8}),
    ({"model": 2}, {"batch": 1, "model": 2}),
]
INVALID_SPECS = [
    ("", "non-empty"),
    (None, "non-empty"),
    (8, "non-empty"),
    ("batch", "no size"),
    ("batch:2,", "no size"),
    ("gpu:2", "unknown axis 'gpu'"),
    ("batch:2,batch:4", "twice"),
    ("batch:0", "not a positive integer"),
    ("model:-2", "not a positive integer"),
    ("batch:2.5", "not a positive integer"),
    ("batch:two", "not a positive integer"),
    ({"model": 0}, "not a positive integer"),
]


def test_parse_mesh_spec():
    for mesh, expected in VALID_SPECS:
        parsed = parse_mesh_spec(mesh)
        assert parsed == expected, mesh
        assert list(parsed) == ["batch", "model"]


def test_invalid_specs_raise_naming_mesh():
    for mesh, problem in INVALID_SPECS:
        with pytest.raises(ValueError, match="`mesh`") as error:
            parse_mesh_spec(mesh)
        assert problem in str(error.value), mesh
        # The same check guards every entry point.
        if mesh:
            with pytest.raises(ValueError, match=problem):
                distribution_for_mesh(mesh)


def test_device_mesh_has_named_batch_and_model_axes():
    mesh = device_mesh("batch:2,model:4", devices=EIGHT_DEVICES)
    assert mesh.shape == (2, 4)
    assert mesh.axis_names == ("batch", "model")
    assert mesh.devices[1, 0] == "cpu:4"
    assert device_mesh("model:8", devices=EIGHT_DEVICES).shape == (1, 8)


def test_device_mesh_must_use_every_device():
    with pytest.raises(ValueError, match="`mesh` batch:2,model:2 has 4 "
                                         "devices, but there are 8"):
        device_mesh("batch:2,model:2", devices=EIGHT_DEVICES)


LAYOUTS = [
    ("moe_language_model/moe/experts/kernel_in", ("model", None, None)),
    ("moe_translation_model/decoder_moe/experts/kernel_out",
     ("model", None, None)),
    ("moe/experts/bias_in", ("model", None)),
    ("feed_forward_experts_3/bias_out", ("model", None)),
    ("experts/kernel_in", ("model", None, None)),
    # Activations are left to XLA's sharding propagation.
    ("moe_language_model/moe/experts/output", None),
    # Replicated: routers, gates, a Residual-MoE's dense expert, the rest.
    ("moe_language_model/moe/router/kernel", None),
    ("moe_language_model/moe/secondary_w_gate", None),
    ("model/moe/dense_expert/kernel_in", None),
    ("model/my_experts/kernel_in", None),
    ("moe_language_model/lstm_1/lstm_cell/kernel", None),
    ("moe_language_model/softmax/kernel", None),
    ("adam/moe_language_model_moe_experts_kernel_in_momentum", None),
]


def test_expert_layout_map():
    layout_map = expert_layout_map(
        device_mesh("batch:2,model:4", devices=EIGHT_DEVICES))
    for path, expected in LAYOUTS:
        layout = layout_map[path]
        assert (None if layout is None else tuple(layout.axes)) == expected, (
            path)


PAPER_LAYOUTS = [
    ("moe_language_model/moe/experts/kernel_in", ("batch", None, None)),
    ("moe/experts/bias_out", ("batch", None)),
    # The expert buffer and the token groups, which the MoE layers look up.
    ("moe_language_model/moe/experts/input", ("batch", None, None)),
    ("moe_language_model/moe/experts/output", ("batch", None, None)),
    ("moe_language_model/moe/token_groups", ("batch", None, None)),
    ("moe_language_model/moe/router/kernel", None),
    ("model/moe/dense_expert/kernel_in", None),
    ("moe_language_model/lstm_1/lstm_cell/kernel", None),
]


def test_expert_layout_map_on_the_batch_axis_is_the_papers_layout():
    layout_map = expert_layout_map(
        device_mesh("batch:8", devices=EIGHT_DEVICES), expert_axis="batch")
    for path, expected in PAPER_LAYOUTS:
        layout = layout_map[path]
        assert (None if layout is None else tuple(layout.axes)) == expected, (
            path)


def test_expert_axis_must_be_a_mesh_axis():
    mesh = device_mesh("batch:8", devices=EIGHT_DEVICES)
    with pytest.raises(ValueError, match="`expert_axis` must be one of"):
        expert_layout_map(mesh, expert_axis="data")
    with pytest.raises(ValueError, match="`expert_axis`"):
        distribution_for_mesh("batch:8", expert_axis="experts")


def test_expert_layout_map_needs_the_named_axes():
    mesh = keras.distribution.DeviceMesh((8,), ("data",), EIGHT_DEVICES)
    with pytest.raises(ValueError, match="`mesh` must be a "
                                         "keras.distribution.DeviceMesh"):
        expert_layout_map(mesh)


def test_no_mesh_means_no_distribution():
    assert distribution_for_mesh(None) is None
    assert distribution_for_mesh("") is None


@pytest.mark.skipif(not TENSORFLOW, reason="TensorFlow behaviour")
def test_expert_sharding_on_tensorflow_raises_pointing_to_jax():
    for mesh in ("batch:2,model:4", "model:2"):
        with pytest.raises(ValueError, match="`mesh`") as error:
            distribution_for_mesh(mesh)
        message = str(error.value)
        assert "KERAS_BACKEND=jax" in message
        assert "expert sharding" in message and "TensorFlow" in message
        # keras.distribution itself would silently not shard there.
        with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
            model_parallel(mesh)
    with pytest.raises(ValueError, match="`expert_axis`") as error:
        distribution_for_mesh("batch:2", expert_axis="batch")
    assert "KERAS_BACKEND=jax" in str(error.value)


@pytest.mark.skipif(not TENSORFLOW, reason="TensorFlow behaviour")
def test_tensorflow_data_parallelism_is_a_mirrored_strategy():
    import tensorflow as tf

    # One CPU in this process: batch:1 only (two replicas:
    # test_mesh_sharding.py).
    strategy = distribution_for_mesh("batch:1")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="`mesh` batch:4,model:1 asks for 4 "
                                         "data-parallel replicas"):
        distribution_for_mesh("batch:4")


@pytest.mark.skipif(TENSORFLOW, reason="JAX behaviour")
def test_jax_distribution_is_set_globally():
    distribution = distribution_for_mesh(
        f"batch:{len(keras.distribution.list_devices())}")
    try:
        assert isinstance(distribution, keras.distribution.ModelParallel)
        assert keras.distribution.distribution() is distribution
        assert distribution.batch_dim_name == "batch"
    finally:
        keras.distribution.set_distribution(None)


def test_synchronous_batches_turns_off_asynchronous_evaluation():
    from sgmoe.distribute import SynchronousBatches

    plain = keras.callbacks.CallbackList([])
    synchronous = keras.callbacks.CallbackList([SynchronousBatches()])
    assert not synchronous._async_test and not synchronous._async_predict
    if keras.backend.backend() == "jax":
        # What the callback is there to turn off.
        assert plain._async_test and plain._async_predict


def _expected_axes(path, variable, experts_paths):
    """The layout a variable must get: split along E if it is an expert
    weight of a MoE layer's `experts`, replicated otherwise."""
    if any(path.startswith(prefix + "/") for prefix in experts_paths):
        return ("model",) + (None,) * (len(variable.shape) - 1)
    return None


@pytest.mark.parametrize("moe", ["flat", "residual", "hierarchical"])
def test_every_variable_of_a_built_model_gets_its_layout(moe):
    """The rules are matched against the variables a model really has, so
    renaming a part of the layers (the experts sublayer, an expert weight)
    fails here instead of silently un-sharding the experts."""
    from sgmoe.layers import HierarchicalMixtureOfExperts
    from sgmoe.layers import MixtureOfExperts
    from sgmoe.layers import find_moe_layers

    inputs = keras.Input((5, 16))
    x = keras.layers.Dense(16)(inputs)
    if moe == "hierarchical":
        x = HierarchicalMixtureOfExperts(2, 4, expert_hidden_dim=8)(x)
    else:
        x = MixtureOfExperts(8, 8, k=2,
                             residual_expert=moe == "residual")(x)
    model = keras.Model(inputs, x)
    experts_paths = [layer.experts.path
                     for layer in find_moe_layers(model).values()]
    layout_map = expert_layout_map(
        device_mesh("batch:2,model:4", devices=EIGHT_DEVICES))
    sharded = 0
    for variable in model.variables:
        layout = layout_map[variable.path]
        axes = None if layout is None else tuple(layout.axes)
        assert axes == _expected_axes(variable.path, variable,
                                      experts_paths), variable.path
        sharded += axes is not None
    assert sharded == 4  # kernel_in, kernel_out, bias_in, bias_out
