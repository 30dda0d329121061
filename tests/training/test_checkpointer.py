"""Checkpointer: atomic checkpoints, exact resume after SIGKILL, NaN stops,
partial writes and corruption.

The kill test runs tests/training/checkpoint_driver.py as real training
processes under the backend of this test run (KERAS_BACKEND).
"""

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import MixtureOfExperts
from sgmoe.training import checkpointer as checkpointer_module
from sgmoe.training import (Checkpointer, CheckpointError, NonFiniteLossError,
                            StopOnNonFiniteLoss)
from tests.training import checkpoint_driver
from tests.training.recording import Recorder

pytestmark = pytest.mark.subprocess

REPOSITORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                          "..")
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "checkpoint_driver.py")
TRAIN_STEPS = 30
CHECKPOINT_EVERY = 10
KILL_AFTER_STEP = 13
SUBPROCESS_TIMEOUT = 240


def read_runs(loss_file):
    """The loss file as one [(start step, data position), {step: fields}]
    per process that wrote it. A line cut by the kill (or still being
    written) has no newline and is left out."""
    runs = []
    with open(loss_file) as text:
        for line in text:
            if not line.endswith("\n"):
                break
            fields = line.split()
            if fields[0] == "start":
                runs.append([(int(fields[1]), int(fields[2])), {}])
            else:
                runs[-1][1][int(fields[0])] = [float(f) for f in fields[1:]]
    return runs


def last_logged_step(loss_file):
    if not loss_file.exists():
        return 0
    runs = read_runs(loss_file)
    return max(runs[-1][1], default=0) if runs else 0


def driver_command(tmp_path, name):
    return [sys.executable, DRIVER, f"--model_dir={tmp_path / name}",
            f"--loss_file={tmp_path / (name + '.losses')}",
            f"--train_steps={TRAIN_STEPS}",
            f"--checkpoint_every={CHECKPOINT_EVERY}", "--steps_per_epoch=5",
            "--step_seconds=0.05"]


def start(command):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(),
               TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(command, cwd=REPOSITORY, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process):
    output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, output
    return output


def test_killed_run_resumes_and_continues_the_uninterrupted_losses(tmp_path):
    # Run A, uninterrupted, and the first attempt of run B side by side.
    run_a = start(driver_command(tmp_path, "a"))
    command_b = driver_command(tmp_path, "b")
    run_b = start(command_b)
    losses_b = tmp_path / "b.losses"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while True:
        assert run_b.poll() is None, "run B ended before it could be killed"
        assert time.monotonic() < deadline, "run B never reached the step"
        if last_logged_step(losses_b) >= KILL_AFTER_STEP:
            break
        time.sleep(0.01)
    os.kill(run_b.pid, signal.SIGKILL)
    run_b.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert run_b.returncode == -signal.SIGKILL
    killed_at = last_logged_step(losses_b)
    # The same command again.
    output = finish(start(command_b))
    finish(run_a)
    assert f"done step={TRAIN_STEPS} data_position={TRAIN_STEPS}" in output

    (start_a, steps_a), = read_runs(tmp_path / "a.losses")
    assert start_a == (0, 0)
    assert sorted(steps_a) == list(range(1, TRAIN_STEPS + 1))
    (start_b1, steps_b1), ((resumed_at, position), steps_b2) = read_runs(
        losses_b)
    assert start_b1 == (0, 0)
    # It resumes from the newest checkpoint and loses at most one interval.
    assert resumed_at % CHECKPOINT_EVERY == 0
    assert CHECKPOINT_EVERY <= resumed_at <= killed_at
    assert killed_at - resumed_at <= CHECKPOINT_EVERY
    assert position == resumed_at
    assert sorted(steps_b2) == list(range(resumed_at + 1, TRAIN_STEPS + 1))
    # Every logged loss and every registered NumPy / Python random draw of
    # run B equals run A's at the same step: bit for bit.
    for steps_b in (steps_b1, steps_b2):
        for step, fields in steps_b.items():
            assert fields == steps_a[step], (
                f"step {step}: run B (loss, numpy draw, python draw) "
                f"{fields}, run A {steps_a[step]}")
    # keep=2: the two newest checkpoints, nothing temporary left.
    directory = tmp_path / "b" / "checkpoints"
    assert sorted(os.listdir(directory)) == ["latest", "step-20", "step-30"]
    assert (directory / "latest").read_text() == "step-30\n"


class Snapshots(keras.callbacks.Callback):
    """Every model and optimizer variable after the given steps."""

    def __init__(self, steps):
        super().__init__()
        self.steps = set(steps)
        self.values = {}
        self._step = 0

    def on_train_begin(self, logs=None):
        self._step = int(ops.convert_to_numpy(
            self.model.optimizer.iterations.value))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step in self.steps:
            self.values[self._step] = all_values(self.model)


def all_values(model):
    return [np.array(ops.convert_to_numpy(v.value))
            for v in model.variables + model.optimizer.variables]


def assert_same_values(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def train_driver_model(model_dir, steps, model=None, snapshot_steps=()):
    """Trains the driver's model (a new one, or `model`) in this process to
    `steps`, resuming from `model_dir`, in epochs of 5 steps with a
    checkpoint after each; returns the model, Checkpointer and Snapshots."""
    if model is None:
        keras.utils.set_random_seed(3)
        model = checkpoint_driver.build_model(seed=3)
    checkpointer = Checkpointer(model_dir, checkpoint_every=5, keep=3)
    state = checkpointer.restore(model)
    snapshots = Snapshots(snapshot_steps)
    position = state.data_position if state else 0
    model.fit(checkpoint_driver.training_stream(3, position),
              steps_per_epoch=5, epochs=steps // 5,
              initial_epoch=state.initial_epoch(5) if state else 0,
              shuffle=False, verbose=0, callbacks=[checkpointer, snapshots])
    return model, checkpointer, snapshots


def test_partial_writes_are_ignored_and_corrupt_checkpoints_fall_back(
        tmp_path):
    model_dir = tmp_path / "run"
    model, _, snapshots = train_driver_model(model_dir, 10,
                                             snapshot_steps=(5, 10))
    directory = model_dir / "checkpoints"
    assert sorted(os.listdir(directory)) == ["latest", "step-10", "step-5"]

    # The restored state is every variable, seed generators and optimizer
    # slots included, bit for bit.
    assert any("seed_generator" in v.path for v in model.variables)
    restored = checkpoint_driver.build_model(seed=3)
    state = Checkpointer(model_dir).restore(restored)
    assert (state.step, state.data_position) == (10, 10)
    assert state.path == str(directory / "step-10")
    assert_same_values(all_values(restored), snapshots.values[10])

    # A kill in the middle of writing step 15 left a temporary directory
    # with a truncated shard file and no manifest, and a temporary pointer.
    # The largest file: the expert kernel's (one file, on one device).
    shard = max((directory / "step-10").glob("*.npy"),
                key=lambda path: path.stat().st_size).name
    partial = directory / ".tmp-step-15"
    partial.mkdir()
    state_bytes = (directory / "step-10" / shard).read_bytes()
    (partial / shard).write_bytes(state_bytes[:100])
    (directory / ".tmp-latest-1234").write_text("step-1")
    state = Checkpointer(model_dir).restore(
        checkpoint_driver.build_model(seed=3))
    assert state.step == 10
    assert sorted(os.listdir(directory)) == ["latest", "step-10", "step-5"]

    # A truncated shard file: reported, and the previous checkpoint is used
    # (here restored into the trained model, which is at step 10).
    (directory / "step-10" / shard).write_bytes(state_bytes[:-7])
    with pytest.warns(RuntimeWarning,
                      match=r"step-10 is corrupt .*truncated"):
        state = Checkpointer(model_dir).restore(model)
    assert (state.step, state.data_position) == (5, 5)
    assert_same_values(all_values(model), snapshots.values[5])

    # Training on from step 5 writes step 10 again over the corrupt one,
    # with the same values as the first time.
    with pytest.warns(RuntimeWarning, match="step-10 is corrupt"):
        _, checkpointer, again = train_driver_model(
            model_dir, 10, model=model, snapshot_steps=(10,))
    assert checkpointer.last_saved_step == 10
    assert_same_values(again.values[10], snapshots.values[10])
    assert Checkpointer(model_dir).restore(
        checkpoint_driver.build_model(seed=3)).step == 10
    assert sorted(os.listdir(directory)) == ["latest", "step-10", "step-5"]

    # Same size, one byte changed: the checksum catches it.
    flipped = bytearray(state_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    (directory / "step-10" / shard).write_bytes(bytes(flipped))
    with pytest.warns(RuntimeWarning,
                      match=f"{shard} fails its SHA-256 check"):
        assert Checkpointer(model_dir).restore(
            checkpoint_driver.build_model(seed=3)).step == 5

    # No usable checkpoint at all: an error naming every problem (and no
    # warning saying it again), not a silent fresh start.
    (directory / "step-5" / "checkpoint.json").write_text("{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match=r"(?s)step-10: .*SHA-256"
                           r".*step-5: checkpoint.json is unreadable"):
            Checkpointer(model_dir).restore(
                checkpoint_driver.build_model(seed=3))


BATCH = 2


def dense_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                  jit_compile=True)
    return model


def data_with_bad_batch(bad_batch):
    rng = np.random.RandomState(0)
    x = rng.randn(8 * BATCH, 4).astype("float32")
    y = rng.randn(8 * BATCH, 1).astype("float32")
    x[(bad_batch - 1) * BATCH:bad_batch * BATCH] = np.nan
    return x, y


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = data_with_bad_batch(7)
    model = dense_model()
    recorder = Recorder()
    with pytest.raises(NonFiniteLossError, match="at step 7"):
        model.fit(x, y, batch_size=BATCH, steps_per_epoch=2, epochs=4,
                  shuffle=False, verbose=0, callbacks=[
                      recorder, StopOnNonFiniteLoss(),
                      Checkpointer(tmp_path, checkpoint_every=2, keep=5)])
    directory = tmp_path / "checkpoints"
    assert sorted(os.listdir(directory)) == [
        "latest", "step-2", "step-4", "step-6"]
    assert (directory / "latest").read_text() == "step-6\n"
    restored = dense_model()
    assert Checkpointer(tmp_path).restore(restored).step == 6
    for weight, expected in zip(restored.get_weights(),
                                recorder.steps[6]["weights"]):
        assert np.isfinite(weight).all()
        np.testing.assert_array_equal(weight, expected)


def test_never_saves_a_non_finite_step_even_without_the_stopper(tmp_path):
    x, y = data_with_bad_batch(5)
    model = dense_model()
    with pytest.warns(RuntimeWarning) as warned:
        model.fit(x, y, batch_size=BATCH, steps_per_epoch=2, epochs=4,
                  shuffle=False, verbose=0, callbacks=[
                      Checkpointer(tmp_path, checkpoint_every=2, keep=5)])
    # At the checkpoints of steps 6 and 8 and at the end of training.
    assert [str(w.message)[:32] for w in warned
            if issubclass(w.category, RuntimeWarning)] == [
        "The loss is not finite at step 6",
        "The loss is not finite at step 8",
        "The loss is not finite at step 8"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "latest", "step-2", "step-4"]


def test_fit_refuses_to_overwrite_a_run_that_was_not_restored(tmp_path):
    x, y = data_with_bad_batch(9)  # no bad batch
    model = dense_model()
    model.fit(x, y, batch_size=BATCH, steps_per_epoch=2, epochs=2,
              verbose=0, callbacks=[Checkpointer(tmp_path, 2)])
    with pytest.raises(ValueError, match=r"newer than the model \(step 0\)"):
        dense_model().fit(x, y, batch_size=BATCH, steps_per_epoch=2,
                          epochs=2, verbose=0,
                          callbacks=[Checkpointer(tmp_path, 2)])
    # Restored and complete: fit with initial_epoch == epochs does nothing.
    resumed = dense_model()
    checkpointer = Checkpointer(tmp_path, 2)
    state = checkpointer.restore(resumed)
    assert state.step == 4 and state.initial_epoch(2) == 2
    resumed.fit(x, y, batch_size=BATCH, steps_per_epoch=2, epochs=2,
                initial_epoch=state.initial_epoch(2), verbose=0,
                callbacks=[checkpointer])
    iterations = resumed.optimizer.iterations.value
    assert int(ops.convert_to_numpy(iterations)) == 4


def test_counts_steps_with_steps_per_execution(tmp_path):
    x, y = data_with_bad_batch(9)
    model = dense_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                  steps_per_execution=2)
    checkpointer = Checkpointer(tmp_path, checkpoint_every=4, keep=5)
    model.fit(x, y, batch_size=BATCH, steps_per_epoch=4, epochs=2,
              shuffle=False, verbose=0, callbacks=[checkpointer])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "latest", "step-4", "step-8"]
    assert checkpointer.data_position == 8
    state = Checkpointer(tmp_path).restore(dense_model())
    assert (state.step, state.data_position) == (8, 8)


def test_random_states_round_trip(tmp_path):
    generators = {
        "python": random.Random(1),
        "legacy": np.random.RandomState(2),
        "pcg64": np.random.default_rng(3),
        "mt19937": np.random.Generator(np.random.MT19937(4)),
    }

    def draw():
        return [generators["python"].random(), generators["legacy"].randn(),
                generators["pcg64"].normal(), generators["mt19937"].random()]

    model = dense_model()
    model.optimizer.build(model.trainable_variables)
    checkpointer = Checkpointer(tmp_path, random_states=generators)
    checkpointer.set_model(model)
    draw()
    checkpointer.save(step=7)
    expected = [draw() for _ in range(3)]
    state = Checkpointer(tmp_path, random_states=generators).restore(
        dense_model())
    assert state.step == 7
    assert [draw() for _ in range(3)] == expected


def test_low_precision_variables_round_trip(tmp_path):
    inputs = keras.Input((4,))
    layer = keras.layers.Dense(3, dtype="bfloat16")
    model = keras.Model(inputs, layer(inputs))
    layer.kernel.assign(np.linspace(-1, 1, 12).reshape(4, 3))
    checkpointer = Checkpointer(tmp_path)
    checkpointer.set_model(model)
    checkpointer.save(step=1)
    restored_layer = keras.layers.Dense(3, dtype="bfloat16")
    restored = keras.Model(inputs, restored_layer(inputs))
    Checkpointer(tmp_path).restore(restored)
    assert keras.backend.standardize_dtype(
        restored_layer.kernel.dtype) == "bfloat16"
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ops.cast(restored_layer.kernel, "float32")),
        ops.convert_to_numpy(ops.cast(layer.kernel, "float32")))


def test_another_model_is_an_error(tmp_path):
    model = dense_model()
    checkpointer = Checkpointer(tmp_path)
    checkpointer.set_model(model)
    checkpointer.save(step=1)
    inputs = keras.Input((5,))
    other = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="written by another model"):
        Checkpointer(tmp_path).restore(other)


def test_checkpoint_from_before_the_window_statistics_restores(
        tmp_path, monkeypatch):
    # What an older sgmoe wrote: the model's variables without the MoE
    # statistics of `statistics_added_later`, numbered in order.
    def moe_model():
        keras.utils.set_random_seed(3)
        inputs = keras.Input((5, 8))
        outputs = MixtureOfExperts(4, 8, k=2, name="moe")(inputs)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss="mse")
        return model, model.get_layer("moe")

    model, moe = moe_model()
    x = np.random.RandomState(0).randn(4, 5, 8).astype("float32")
    model.fit(x, x, epochs=1, verbose=0)
    later = {id(v) for v in moe.statistics_added_later}
    all_variables = checkpointer_module._state_variables

    def older_variables(model):
        named, counts = [], {"model": 0, "optimizer": 0}
        for name, variable in all_variables(model):
            group = name.split("_")[0]
            if id(variable) not in later:
                named.append((f"{group}_{counts[group]}", variable))
                counts[group] += 1
        return named

    monkeypatch.setattr(checkpointer_module, "_state_variables",
                        older_variables)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.set_model(model)
    checkpointer.save(step=1)
    monkeypatch.setattr(checkpointer_module, "_state_variables",
                        all_variables)

    restored, restored_moe = moe_model()
    restored.optimizer.build(restored.trainable_variables)
    assert Checkpointer(tmp_path).restore(restored).step == 1
    for old, new in zip(model.variables, restored.variables):
        expected = (0.0 if id(old) in later
                    else ops.convert_to_numpy(old))
        np.testing.assert_array_equal(ops.convert_to_numpy(new), expected)
    assert float(ops.convert_to_numpy(moe.window_steps)) == 1.0
    for old, new in zip(model.optimizer.variables,
                        restored.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(new),
                                      ops.convert_to_numpy(old))


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    checkpointer = Checkpointer(tmp_path / "new")
    assert checkpointer.restore(dense_model()) is None
    assert checkpointer.data_position == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(keep=0), "keep"),
    (dict(random_states=[random.Random()]), "random_states"),
    (dict(random_states={"x": object()}), r"random_states\['x'\]"),
])
def test_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Checkpointer(tmp_path, **kwargs)
