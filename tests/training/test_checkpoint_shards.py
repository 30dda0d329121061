"""Checkpointer's per-shard format: files, portability, format 1.

The mesh tests run this file as a JAX process with 8 virtual CPU devices
(`python tests/training/test_checkpoint_shards.py DIR`): a model whose
expert weights (bfloat16) and their Adam slots are sharded over the mesh
batch:2,model:4 writes checkpoints, which restore on a 4-device mesh of
another shape (batch:2,model:2, so each device's experts span two saved
shards) and on one device; a one-device checkpoint and a format-1
checkpoint restore on the 8-device mesh; a corrupt shard file is caught.
One process with 8 virtual devices takes the same per-shard code path as
each process of a multi-host run (its addressable shards).
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LENGTH, MODEL_DIM, NUM_EXPERTS, HIDDEN_DIM = 3, 8, 8, 16
SOURCE_MESH = "batch:2,model:4"
TARGET_MESH = "batch:2,model:2"
EXPERT_KERNEL = "moe/experts/kernel_in"


def build_model(distribution=None):
    """A MoE (bfloat16 experts) and a head, compiled with Adam, built."""
    import keras

    from sgmoe.layers import MixtureOfExperts

    scope = (distribution.scope() if distribution is not None
             else contextlib.nullcontext())
    with scope:
        inputs = keras.Input((LENGTH, MODEL_DIM))
        hidden = MixtureOfExperts(NUM_EXPERTS, HIDDEN_DIM, k=2, seed=0,
                                  dtype="bfloat16", name="moe")(inputs)
        outputs = keras.layers.Dense(2, name="head")(hidden)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.optimizer.build(model.trainable_variables)
    return model


def all_variables(model):
    return model.variables + model.optimizer.variables


def fill(model, seed):
    """Gives every model and optimizer variable distinct random values."""
    import keras

    rng = np.random.default_rng(seed)
    for variable in all_variables(model):
        shape = tuple(variable.shape)
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if "int" in dtype:
            value = rng.integers(0, 1000, shape)
        else:
            value = rng.standard_normal(shape)
        variable.assign(value.astype("float32" if "float" in dtype
                                     else dtype))


def values(model):
    """Every variable's value as float64 (bfloat16 converts exactly)."""
    from keras import ops

    return [np.asarray(ops.convert_to_numpy(variable.value)).astype(
        "float64") for variable in all_variables(model)]


def write_format_1(model, model_dir, step):
    """A checkpoint as `Checkpointer` wrote it before per-shard files
    (format 1): every variable whole in one state.npz."""
    import keras
    from keras import ops

    arrays, specs = {}, {"model": [], "optimizer": []}
    for group, variables in (("model", model.variables),
                             ("optimizer", model.optimizer.variables)):
        for index, variable in enumerate(variables):
            value = np.asarray(ops.convert_to_numpy(variable.value))
            if value.dtype.isbuiltin != 1:
                value = value.view(f"uint{8 * value.dtype.itemsize}")
            arrays[f"{group}_{index}"] = value
            specs[group].append({
                "path": variable.path, "shape": list(value.shape),
                "dtype": keras.backend.standardize_dtype(variable.dtype)})
    directory = os.path.join(model_dir, "checkpoints")
    path = os.path.join(directory, f"step-{step}")
    os.makedirs(path)
    state = os.path.join(path, "state.npz")
    with open(state, "wb") as file:
        np.savez(file, **arrays)
    with open(state, "rb") as file:
        data = file.read()
    manifest = {
        "format": "sgmoe-checkpoint", "version": 1, "step": step,
        "data_position": step, "epoch": 0,
        "backend": keras.backend.backend(), "time": time.time(),
        "model_variables": specs["model"],
        "optimizer_variables": specs["optimizer"], "random_states": {},
        "files": {"state.npz": {"size": len(data), "sha256":
                                hashlib.sha256(data).hexdigest()}}}
    with open(os.path.join(path, "checkpoint.json"), "w") as file:
        json.dump(manifest, file)
    with open(os.path.join(directory, "latest"), "w") as file:
        file.write(f"step-{step}\n")
    return path


def same(actual, expected):
    """Whether two lists of arrays are equal bit for bit."""
    return len(actual) == len(expected) and all(
        a.shape == e.shape and np.array_equal(a, e)
        for a, e in zip(actual, expected))


# -- the JAX process -------------------------------------------------------

def mesh_report(directory):
    """Runs the mesh round trips in this process (JAX, 8 devices)."""
    import jax

    from sgmoe.distribute import model_parallel
    from sgmoe.training import Checkpointer

    devices = jax.devices()
    source_mesh = model_parallel(SOURCE_MESH)
    target_mesh = model_parallel(TARGET_MESH, devices=devices[4:])
    report = {"devices": len(devices)}

    # Two checkpoints of the sharded model, with different values.
    source = build_model(source_mesh)
    writer = Checkpointer(os.path.join(directory, "sharded"))
    writer.set_model(source)
    fill(source, 1)
    previous = values(source)
    writer.save(step=4)
    fill(source, 2)
    expected = values(source)
    path = writer.save(step=5)
    manifest = json.load(open(os.path.join(path, "checkpoint.json")))
    report["files"] = sorted(os.listdir(path))
    report["variables"] = {}
    for name, variable in zip(
            [f"model_{i}" for i in range(len(source.variables))]
            + [f"optimizer_{i}"
               for i in range(len(source.optimizer.variables))],
            all_variables(source)):
        report["variables"][variable.path] = {
            "shape": list(variable.shape),
            "spec": list(variable.value.sharding.spec),
            "saved": [[entry["file"], entry["start"], entry["shape"]]
                      for entry in manifest["shards"][name]],
            "file_shapes": [
                list(np.load(os.path.join(path, entry["file"])).shape)
                for entry in manifest["shards"][name]]}

    def restored_on(distribution, model_dir):
        model = build_model(distribution)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = Checkpointer(model_dir).restore(model)
        kernel = next(v for v in model.variables
                      if v.path == EXPERT_KERNEL).value
        return model, {
            "step": state.step,
            "warnings": [str(w.message) for w in caught],
            "kernel_spec": (list(kernel.sharding.spec)
                            if hasattr(kernel.sharding, "spec") else None),
            "kernel_devices": len(kernel.sharding.device_set),
        }

    sharded_dir = os.path.join(directory, "sharded")
    for name, distribution in (("on_4_devices", target_mesh),
                               ("on_1_device", None)):
        model, report[name] = restored_on(distribution, sharded_dir)
        report[name]["exact"] = same(values(model), expected)

    # One device -> the 8-device mesh, in both formats.
    single = build_model()
    fill(single, 3)
    single_values = values(single)
    writer = Checkpointer(os.path.join(directory, "single"))
    writer.set_model(single)
    writer.save(step=3)
    write_format_1(single, os.path.join(directory, "format_1"), 3)
    for name in ("single", "format_1"):
        model, report[f"{name}_on_8"] = restored_on(
            source_mesh, os.path.join(directory, name))
        report[f"{name}_on_8"]["exact"] = same(values(model), single_values)

    # One changed byte in one expert-kernel shard of step 5: caught, and
    # step 4 is restored instead.
    shard_file = next(entry[0] for entry
                      in report["variables"][EXPERT_KERNEL]["saved"]
                      if entry[1][0] > 0)
    with open(os.path.join(path, shard_file), "r+b") as file:
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 0xFF]))
    report["corrupted"] = shard_file
    for name, distribution in (("corrupt_on_4_devices", target_mesh),
                               ("corrupt_on_1_device", None)):
        model, report[name] = restored_on(distribution, sharded_dir)
        report[name]["exact"] = same(values(model), previous)
    return report


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("shards"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), directory], env=env,
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
def test_each_distinct_shard_is_one_file_and_none_holds_a_sharded_variable(
        mesh):
    assert mesh["devices"] == 8
    assert "checkpoint.json" in mesh["files"]
    assert not [name for name in mesh["files"]
                if name.startswith("index-")]
    listed = set()
    sharded = 0
    for path, variable in mesh["variables"].items():
        listed.update(entry[0] for entry in variable["saved"])
        assert [entry[2] for entry in variable["saved"]] == \
            variable["file_shapes"], path
        if "model" in variable["spec"]:
            sharded += 1
            # Experts over "model" (4), replicated over "batch": 4 files,
            # each a quarter of the experts; no file holds the variable.
            axis = variable["spec"].index("model")
            assert len(variable["saved"]) == 4, path
            for file, start, shape in variable["saved"]:
                assert shape[axis] == variable["shape"][axis] // 4, path
                assert start[axis] % shape[axis] == 0, path
                assert file == f"{file.split('.')[0]}." + "_".join(
                    str(offset) for offset in start) + ".npy"
        else:
            # Replicated on all 8 devices: written once.
            (file, start, shape), = variable["saved"]
            assert shape == variable["shape"] and file.count(".") == 1
    # Expert kernels, biases and their two Adam slots each.
    assert sharded == 4 * 3
    assert mesh["variables"][EXPERT_KERNEL]["spec"][0] == "model"
    assert listed == set(mesh["files"]) - {"checkpoint.json"}


@pytest.mark.subprocess
@pytest.mark.parametrize("name, spec, devices", [
    ("on_4_devices", ["model", None, None], 4),
    ("on_1_device", None, 1)])
def test_a_sharded_checkpoint_restores_bit_exactly_elsewhere(
        mesh, name, spec, devices):
    report = mesh[name]
    assert report["step"] == 5 and report["warnings"] == []
    assert report["exact"]
    assert report["kernel_devices"] == devices
    if spec is not None:
        assert report["kernel_spec"] == spec


@pytest.mark.subprocess
@pytest.mark.parametrize("name", ["single_on_8", "format_1_on_8"])
def test_one_device_checkpoints_restore_on_the_mesh(mesh, name):
    report = mesh[name]
    assert report["step"] == 3 and report["warnings"] == []
    assert report["exact"]
    assert report["kernel_devices"] == 8
    assert report["kernel_spec"] == ["model", None, None]


@pytest.mark.subprocess
@pytest.mark.parametrize("name", ["corrupt_on_4_devices",
                                  "corrupt_on_1_device"])
def test_a_corrupt_shard_falls_back_to_the_previous_checkpoint(mesh, name):
    report = mesh[name]
    shard = mesh["corrupted"]
    assert shard.startswith("model_") and shard.count(".") == 2
    assert report["step"] == 4 and report["exact"]
    (message,) = report["warnings"]
    assert "step-5 is corrupt" in message
    assert f"{shard} fails its SHA-256 check" in message


# -- in this process (any backend) ----------------------------------------

def test_format_1_checkpoints_restore(tmp_path):
    from sgmoe.training import Checkpointer

    model = build_model()
    fill(model, 4)
    write_format_1(model, tmp_path, 7)
    restored = build_model()
    state = Checkpointer(tmp_path).restore(restored)
    assert (state.step, state.data_position) == (7, 7)
    assert same(values(restored), values(model))


def test_format_1_corruption_is_caught(tmp_path):
    from sgmoe.training import Checkpointer, CheckpointError

    model = build_model()
    fill(model, 4)
    path = write_format_1(model, tmp_path, 7)
    state = os.path.join(path, "state.npz")
    data = bytearray(open(state, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(state, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="state.npz fails its SHA-256"):
        Checkpointer(tmp_path).restore(build_model())


def test_one_device_writes_each_variable_whole_and_checksummed(tmp_path):
    from sgmoe.training import Checkpointer

    model = build_model()
    fill(model, 5)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.set_model(model)
    path = checkpointer.save(step=2)
    manifest = json.load(open(os.path.join(path, "checkpoint.json")))
    assert manifest["version"] == 2
    names = ([f"model_{i}" for i in range(len(model.variables))]
             + [f"optimizer_{i}"
                for i in range(len(model.optimizer.variables))])
    assert sorted(os.listdir(path)) == sorted(
        ["checkpoint.json"] + [f"{name}.npy" for name in names])
    for name, value in zip(names, values(model)):
        (entry,) = manifest["shards"][name]
        assert entry == {"file": f"{name}.npy", "start": [0] * value.ndim,
                         "shape": list(value.shape)}
        data = open(os.path.join(path, entry["file"]), "rb").read()
        assert manifest["files"][entry["file"]] == {
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        stored = np.load(os.path.join(path, entry["file"]))
        if stored.dtype == np.uint16:  # bfloat16 bits
            import ml_dtypes

            stored = stored.view(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(stored.astype("float64"), value)


def test_a_shard_missing_from_the_manifest_is_corrupt(tmp_path):
    from sgmoe.training import Checkpointer, CheckpointError

    model = build_model()
    checkpointer = Checkpointer(tmp_path)
    checkpointer.set_model(model)
    path = checkpointer.save(step=2)
    manifest_path = os.path.join(path, "checkpoint.json")
    manifest = json.load(open(manifest_path))
    name = next(name for name, entries in manifest["shards"].items()
                if entries[0]["shape"])
    manifest["shards"][name][0]["shape"][0] -= 1
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(CheckpointError, match="do not cover"):
        Checkpointer(tmp_path).restore(build_model())


if __name__ == "__main__":
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, ROOT)
    from tests.xla_flags import with_devices

    os.environ["XLA_FLAGS"] = with_devices(8)
    print(json.dumps(mesh_report(sys.argv[1])))
