"""Atomic training checkpoints that a killed run resumes from exactly."""

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
import warnings
import zipfile

import keras
import numpy as np
from keras import ops

from sgmoe import _validation
from sgmoe.distribute import processes
from sgmoe.training import _logs

FORMAT = "sgmoe-checkpoint"
VERSION = 1
STATE_FILE = "state.npz"
MANIFEST_FILE = "checkpoint.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class CheckpointError(RuntimeError):
    """A checkpoint directory holds checkpoints, but none can be restored."""


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """What `Checkpointer.restore` restored.

    Attributes:
        step: the global training step of the checkpoint (the optimizer's
            `iterations` when it was written).
        data_position: training batches consumed when it was written; skip
            that many batches of the training stream to continue it.
        path: the checkpoint's directory.
    """

    step: int
    data_position: int
    path: str

    def initial_epoch(self, steps_per_epoch):
        """The `initial_epoch` for `fit` with epochs of `steps_per_epoch`."""
        steps_per_epoch = _validation.check_positive_int(
            "steps_per_epoch", steps_per_epoch)
        return self.step // steps_per_epoch


class Checkpointer(keras.callbacks.Callback):
    """Writes atomic checkpoints every N steps; `restore` resumes from them.

    Every `checkpoint_every` training steps it writes
    `model_dir/checkpoints/step-<n>/` holding the whole training state:
    every model variable (weights, non-trainable state such as MoE
    statistics, and the state of every `keras.random.SeedGenerator`, which
    `model.save_weights` leaves out), every optimizer variable (iterations,
    learning rate, slots), the global step, the data position (batches
    consumed) and the state of the Python / NumPy random generators passed
    in `random_states`. A run killed at any moment (even by SIGKILL) and
    started again with the same command resumes from the newest complete
    checkpoint, so it loses at most `checkpoint_every` steps, and continues
    with the same updates, losses and random draws as a run that was never
    interrupted.

    Writing is atomic: everything goes into a temporary sibling directory
    (`.tmp-step-<n>-*`), each file and the directory are fsynced, a
    manifest (`checkpoint.json`, with the size and SHA-256 of the state
    file) is written last, and `os.replace` renames the directory into
    place. The `latest` file is then replaced atomically by one naming the
    new checkpoint, and only then are checkpoints beyond the newest `keep`
    deleted (renamed away first, so a half-deleted one never looks
    complete). A directory named `step-<n>` therefore always holds a whole
    checkpoint; temporary directories left by a kill are ignored and
    removed by `restore`.

    The checkpoint written after a step is only written if the logged loss
    is finite; put `StopOnNonFiniteLoss` before this callback to also stop
    training there with a clear message (the newest checkpoint is then the
    last good one).

    Resume scheme (what a training script does):

    1. Build the training data as one endless stream of batches in which
       batch i is the same in every run and however often the dataset is
       iterated: e.g. epoch e of the data shuffled by
       `tf.random.experimental.stateless_shuffle(indices, seed=[s, e])`,
       then `batch(..., drop_remainder=True)`. Avoid
       `shuffle(..., reshuffle_each_iteration=True)`: its order depends on
       how many iterators were made before, and Keras on JAX makes an
       extra one in a model's first `fit` (to build the compiled loss).
    2. Build and compile the model, then call `state = checkpointer
       .restore(model)`. It returns None on a fresh start, else a
       `CheckpointState`.
    3. Call `fit` once over the stream from batch `state.data_position` on
       (`stream.skip(n)`, or cheaper, start at epoch n * batch // examples)
       with `steps_per_epoch=S` (Keras epochs are then just logging windows
       of S steps), `epochs=ceil(train_steps / S)` and
       `initial_epoch=state.initial_epoch(S)`. `checkpoint_every` must be a
       multiple of S, so every checkpoint falls on an epoch boundary and the
       resumed run's epochs (and Keras's per-epoch running-mean loss) line
       up with those of an uninterrupted run. If the run is complete,
       `initial_epoch == epochs` and `fit` does nothing.

    Only one run may write a `model_dir` at a time. `fit` refuses to
    start (ValueError) if the directory holds checkpoints newer than the
    model and `restore` was not called, so a forgotten `restore` cannot
    overwrite a run.

    Several processes (JAX after `jax.distributed.initialize`, e.g.
    `--multi_host`): every process runs the callback; weights sharded
    across processes are gathered into whole arrays (a collective, so all
    take part), process 0 alone writes, and all leave `save` together once
    the checkpoint is complete. `model_dir` must be on a file system every
    process sees; each restores from it, and the arrays are whole, so a
    checkpoint loads on any mesh or on one device, and the other way round.

    Args:
        model_dir: the run's directory; checkpoints go to
            `model_dir/checkpoints`.
        checkpoint_every: write a checkpoint every this many training steps
            (global steps, i.e. when the optimizer's `iterations` reaches a
            multiple of it).
        keep: how many of the newest checkpoints to keep (at least 1).
        random_states: a dict from names to Python or NumPy random
            generators whose state is saved and restored: `random.Random`
            or the `random` module, `numpy.random.Generator`,
            `numpy.random.RandomState` or the `numpy.random` module.
        save_on_train_end: also write a checkpoint when `fit` ends normally
            at a step that has none (e.g. a final step that is not a
            multiple of `checkpoint_every`).

    Example:

    checkpointer = Checkpointer("/tmp/run", checkpoint_every=100)
    state = checkpointer.restore(model)
    position = state.data_position if state else 0
    model.fit(stream.skip(position), steps_per_epoch=100, epochs=6,
              initial_epoch=state.initial_epoch(100) if state else 0,
              callbacks=[StopOnNonFiniteLoss(), checkpointer])
    """

    def __init__(self, model_dir, checkpoint_every=100, keep=3,
                 random_states=None, save_on_train_end=True):
        super().__init__()
        if not isinstance(model_dir, (str, os.PathLike)) or not str(model_dir):
            raise ValueError("`model_dir` must be a directory path, received "
                             f"model_dir={model_dir!r}.")
        self.model_dir = os.fspath(model_dir)
        self.checkpoint_every = _validation.check_positive_int(
            "checkpoint_every", checkpoint_every)
        self.keep = _validation.check_positive_int("keep", keep)
        self.random_states = _check_random_states(random_states)
        self.save_on_train_end = bool(save_on_train_end)
        self.directory = os.path.join(self.model_dir, "checkpoints")
        self.data_position = 0
        self.last_saved_step = None
        self._restored = False
        self._steps = _logs.StepCounter()
        self._epoch = 0
        self._last_logs = None

    # -- restoring ---------------------------------------------------------

    def restore(self, model):
        """Loads the newest complete checkpoint into `model`, if there is one.

        Builds the optimizer first if it is not built. Temporary directories
        left by a killed write are removed. A checkpoint that fails its
        checks (missing or truncated file, checksum mismatch, unreadable
        manifest) is reported with a `RuntimeWarning` naming it and the
        problem, and the previous one is tried.

        Args:
            model: a built model (compiled, to restore the optimizer too).

        Returns:
            A `CheckpointState`, or None if there is no checkpoint (a fresh
            start).

        Raises:
            CheckpointError: checkpoints exist but none passes its checks.
            ValueError: a checkpoint does not fit the model (other variable
                count, shape or dtype: another model wrote it).
        """
        self._restored = True
        self._remove_leftovers()
        problems = []
        for step, path in reversed(self._complete_checkpoints()):
            try:
                manifest, arrays = _read_checkpoint(path, step)
            except _CorruptCheckpoint as error:
                problems.append(f"{path}: {error}")
                warnings.warn(
                    f"Checkpoint {path} is corrupt and was skipped: {error}. "
                    "Trying the previous checkpoint.", RuntimeWarning,
                    stacklevel=2)
                continue
            self._assign(model, manifest, arrays, path)
            self.data_position = int(manifest["data_position"])
            self.last_saved_step = int(manifest["step"])
            return CheckpointState(step=int(manifest["step"]),
                                   data_position=self.data_position,
                                   path=path)
        if problems:
            raise CheckpointError(
                f"No usable checkpoint in {self.directory}; every one failed "
                "its checks:\n  " + "\n  ".join(problems) + "\nMove the "
                "directory away to start training from scratch.")
        self.data_position = 0
        self.last_saved_step = None
        return None

    def _assign(self, model, manifest, arrays, path):
        optimizer = getattr(model, "optimizer", None)
        saved_optimizer = manifest["optimizer_variables"]
        if optimizer is not None and saved_optimizer and not optimizer.built:
            optimizer.build(model.trainable_variables)
        targets = [("model", model.variables, manifest["model_variables"])]
        if optimizer is not None and saved_optimizer:
            targets.append(("optimizer", optimizer.variables, saved_optimizer))
        for group, variables, specs in targets:
            _check_specs(group, variables, specs, path)
        # Check everything before assigning anything.
        values = []
        for group, variables, specs in targets:
            for index, variable in enumerate(variables):
                values.append((variable, _decode_array(
                    arrays[f"{group}_{index}"], specs[index]["dtype"])))
        for variable, value in values:
            variable.assign(value)
        saved_random = manifest.get("random_states", {})
        for name, generator in self.random_states.items():
            if name not in saved_random:
                warnings.warn(
                    f"Checkpoint {path} has no state for the random generator "
                    f"{name!r}; it keeps its current state.", RuntimeWarning,
                    stacklevel=3)
                continue
            _set_random_state(generator, _from_json(saved_random[name]))

    def _complete_checkpoints(self):
        """(step, path) of every `step-<n>` directory, by increasing step."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _STEP_DIR.match(name)
            path = os.path.join(self.directory, name)
            if match and os.path.isdir(path):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _remove_leftovers(self):
        # Another process's leftovers could be a write in progress.
        if (not processes.is_primary_process()
                or not os.path.isdir(self.directory)):
            return
        for name in os.listdir(self.directory):
            if name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                path = os.path.join(self.directory, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    _remove_file(path)

    # -- callback hooks ----------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model  # syncs the variables on JAX
        self._steps.step = _optimizer_step(model)
        self._last_logs = None
        steps_per_epoch = (self.params or {}).get("steps")
        if steps_per_epoch and self.checkpoint_every % steps_per_epoch:
            raise ValueError(
                f"`checkpoint_every` ({self.checkpoint_every}) must be a "
                f"multiple of the steps per epoch ({steps_per_epoch}): a "
                "resumed run starts at an epoch boundary, so every checkpoint "
                "must fall on one. Train on a repeated stream with "
                "`steps_per_epoch` dividing `checkpoint_every`.")
        if not self._restored:
            newer = [path for step, path in self._complete_checkpoints()
                     if step > self._steps.step]
            if newer:
                raise ValueError(
                    f"{self.directory} holds checkpoints newer than the model "
                    f"(step {self._steps.step}), e.g. {newer[-1]}. Call "
                    "`restore(model)` on this Checkpointer before `fit` to "
                    "resume, or use another `model_dir`.")
        if self.last_saved_step is None:
            self.last_saved_step = self._steps.step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._steps.begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        previous = self._steps.step
        self.data_position += self._steps.end(batch)
        self._last_logs = logs  # read only when saving: no sync per step
        step = self._steps.step
        if step // self.checkpoint_every > previous // self.checkpoint_every:
            self._save_if_finite(step)

    def on_train_end(self, logs=None):
        if self.save_on_train_end and self._steps.step != self.last_saved_step:
            self._save_if_finite(self._steps.step)

    def _save_if_finite(self, step):
        if not _loss_is_finite(self._last_logs):
            warnings.warn(
                f"The loss is not finite at step {step}: no checkpoint was "
                "written, the newest one on disk is the last good one.",
                RuntimeWarning, stacklevel=2)
            return
        self.save(step)

    # -- writing -----------------------------------------------------------

    def save(self, step=None):
        """Writes a checkpoint of the model now; returns its directory.

        Called by the hooks; call it directly to checkpoint outside `fit`.
        `step` defaults to the optimizer's `iterations`.
        """
        model = self.model  # syncs the variables on JAX
        if step is None:
            step = _optimizer_step(model)
        final = os.path.join(self.directory, f"step-{step}")
        # Every process gathers (a collective); process 0 writes.
        arrays, manifest = self._snapshot(model, step)
        if processes.is_primary_process():
            self._write(arrays, manifest, step, final)
        processes.wait_for_all_processes(f"sgmoe checkpoint {final}")
        self.last_saved_step = step
        return final

    def _write(self, arrays, manifest, step, final):
        os.makedirs(self.directory, exist_ok=True)
        temporary = _make_unique_directory(self.directory,
                                           f"{_TEMP_PREFIX}step-{step}-")
        state_path = os.path.join(temporary, STATE_FILE)
        with open(state_path, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        manifest["files"] = {STATE_FILE: _file_summary(state_path)}
        _write_synced(os.path.join(temporary, MANIFEST_FILE),
                      json.dumps(manifest, indent=1).encode("utf-8"))
        _fsync_directory(temporary)
        if os.path.exists(final):
            # A step reached again after resuming from an older checkpoint
            # (the newer one was corrupt): move the old one away first.
            _discard(final, self.directory)
        os.replace(temporary, final)
        _fsync_directory(self.directory)
        latest_temporary = os.path.join(
            self.directory, f"{_TEMP_PREFIX}{LATEST_FILE}-{os.getpid()}")
        _write_synced(latest_temporary, f"step-{step}\n".encode("utf-8"))
        os.replace(latest_temporary, os.path.join(self.directory, LATEST_FILE))
        _fsync_directory(self.directory)
        self._prune(step)

    def _snapshot(self, model, step):
        arrays, model_specs, optimizer_specs = {}, [], []
        for index, variable in enumerate(model.variables):
            arrays[f"model_{index}"], spec = _encode_variable(variable)
            model_specs.append(spec)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            for index, variable in enumerate(optimizer.variables):
                arrays[f"optimizer_{index}"], spec = _encode_variable(variable)
                optimizer_specs.append(spec)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "data_position": int(self.data_position),
            "epoch": int(self._epoch),
            "backend": keras.backend.backend(),
            "time": time.time(),
            "model_variables": model_specs,
            "optimizer_variables": optimizer_specs,
            "random_states": {
                name: _to_json(_get_random_state(generator))
                for name, generator in self.random_states.items()},
        }
        return arrays, manifest

    def _prune(self, newest_step):
        """Keeps the `keep` newest checkpoints up to `newest_step`.

        Checkpoints above it can only be ones `restore` skipped as corrupt.
        """
        checkpoints = self._complete_checkpoints()
        kept = [path for step, path in checkpoints
                if step <= newest_step][-self.keep:]
        for _, path in checkpoints:
            if path not in kept:
                _discard(path, self.directory)


class _CorruptCheckpoint(Exception):
    pass


def _read_checkpoint(path, step):
    """The manifest and arrays of a checkpoint, after checking them."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    try:
        with open(manifest_path, "rb") as file:
            manifest = json.loads(file.read().decode("utf-8"))
    except FileNotFoundError:
        raise _CorruptCheckpoint(f"{MANIFEST_FILE} is missing") from None
    except (OSError, ValueError) as error:
        raise _CorruptCheckpoint(
            f"{MANIFEST_FILE} is unreadable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _CorruptCheckpoint(f"{MANIFEST_FILE} is not an sgmoe checkpoint "
                                 "manifest")
    if manifest.get("version") != VERSION:
        raise _CorruptCheckpoint(
            f"format version {manifest.get('version')!r}, expected {VERSION}")
    for key in ("step", "data_position", "files", "model_variables",
                "optimizer_variables"):
        if key not in manifest:
            raise _CorruptCheckpoint(f"{MANIFEST_FILE} has no {key!r}")
    if manifest["step"] != step:
        raise _CorruptCheckpoint(
            f"{MANIFEST_FILE} says step {manifest['step']}, the directory "
            f"name step {step}")
    for name, expected in manifest["files"].items():
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            raise _CorruptCheckpoint(f"{name} is missing")
        actual = _file_summary(file_path)
        if actual["size"] != expected.get("size"):
            raise _CorruptCheckpoint(
                f"{name} has {actual['size']} bytes, expected "
                f"{expected.get('size')} (truncated?)")
        if actual["sha256"] != expected.get("sha256"):
            raise _CorruptCheckpoint(f"{name} fails its SHA-256 check")
    try:
        with np.load(os.path.join(path, STATE_FILE),
                     allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, KeyError, EOFError,
            zipfile.BadZipFile) as error:
        raise _CorruptCheckpoint(f"{STATE_FILE} is unreadable ({error})") \
            from None
    for group in ("model", "optimizer"):
        for index in range(len(manifest[f"{group}_variables"])):
            if f"{group}_{index}" not in arrays:
                raise _CorruptCheckpoint(
                    f"{STATE_FILE} lacks {group} variable {index}")
    return manifest, arrays


def _check_specs(group, variables, specs, path):
    if len(variables) != len(specs):
        raise ValueError(
            f"Checkpoint {path} holds {len(specs)} {group} variables, the "
            f"model has {len(variables)}: it was written by another model "
            "or optimizer.")
    for variable, spec in zip(variables, specs):
        shape = tuple(variable.shape)
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if shape != tuple(spec["shape"]) or dtype != spec["dtype"]:
            raise ValueError(
                f"Checkpoint {path}: {group} variable {spec['path']!r} has "
                f"shape {tuple(spec['shape'])} and dtype {spec['dtype']}, "
                f"the model's {variable.path!r} has shape {shape} and dtype "
                f"{dtype}: it was written by another model or optimizer.")


def _encode_variable(variable):
    value = _whole_array(variable.value)
    dtype = keras.backend.standardize_dtype(variable.dtype)
    if value.dtype.isbuiltin != 1:
        # ml_dtypes (bfloat16, float8) do not survive .npy: store the bits.
        value = value.view(f"uint{8 * value.dtype.itemsize}")
    spec = {"path": variable.path, "shape": list(value.shape), "dtype": dtype}
    return value, spec


def _whole_array(value):
    """A variable's value as one NumPy array, gathered from every process
    when it is split across processes (JAX multi-process)."""
    if keras.backend.backend() == "jax":
        import jax

        if (isinstance(value, jax.Array) and not value.is_fully_addressable
                and not value.is_fully_replicated):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(value,
                                                                tiled=True))
    return np.asarray(ops.convert_to_numpy(value))


def _decode_array(value, dtype):
    if value.dtype.kind == "u" and dtype != str(value.dtype):
        import ml_dtypes

        return value.view(getattr(ml_dtypes, dtype))
    return value


def _optimizer_step(model):
    """The optimizer's `iterations`, 0 without an optimizer."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    # Through `.value`: numpy warns about converting a Keras variable on JAX.
    return int(ops.convert_to_numpy(optimizer.iterations.value))


def _loss_is_finite(logs):
    value = (logs or {}).get("loss")
    if value is None:
        return True
    value = _logs.as_float(value)
    return value is None or math.isfinite(value)


def _check_random_states(random_states):
    if random_states is None:
        return {}
    if not isinstance(random_states, dict):
        raise ValueError(
            "`random_states` must be a dict from names to random generators, "
            f"received random_states={random_states!r}.")
    for name, generator in random_states.items():
        if not isinstance(name, str):
            raise ValueError("`random_states` keys must be strings, received "
                             f"{name!r}.")
        try:
            _to_json(_get_random_state(generator))
        except TypeError:
            raise ValueError(
                f"`random_states[{name!r}]` must be a random.Random, the "
                "random module, a numpy.random.Generator, a "
                "numpy.random.RandomState or the numpy.random module, "
                f"received {generator!r}.") from None
    return dict(random_states)


def _get_random_state(generator):
    if isinstance(generator, np.random.Generator):
        return generator.bit_generator.state
    if hasattr(generator, "get_state"):  # RandomState, numpy.random
        return generator.get_state(legacy=False)
    if hasattr(generator, "getstate"):  # random.Random, random
        return generator.getstate()
    raise TypeError(f"not a random generator: {generator!r}")


def _set_random_state(generator, state):
    if isinstance(generator, np.random.Generator):
        generator.bit_generator.state = state
    elif hasattr(generator, "set_state"):
        generator.set_state(state)
    else:
        generator.setstate(state)


def _to_json(value):
    """JSON-able form of a random state: dicts, tuples, ints, arrays."""
    if isinstance(value, dict):
        return {"dict": {str(key): _to_json(item)
                         for key, item in value.items()}}
    if isinstance(value, (tuple, list)):
        return {"tuple" if isinstance(value, tuple) else "list":
                [_to_json(item) for item in value]}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot save {type(value).__name__} in a random state")


def _from_json(value):
    if "dict" in value:
        return {key: _from_json(item) for key, item in value["dict"].items()}
    if "tuple" in value:
        return tuple(_from_json(item) for item in value["tuple"])
    if "list" in value:
        return [_from_json(item) for item in value["list"]]
    if "ndarray" in value:
        return np.asarray(value["ndarray"], dtype=value["dtype"])
    return value["value"]


def _file_summary(path):
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _write_synced(path, data):
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _discard(path, directory):
    """Moves a checkpoint out of the `step-<n>` names, then deletes it."""
    trash = _make_unique_directory(directory, _TRASH_PREFIX)
    os.replace(path, os.path.join(trash, os.path.basename(path)))
    _fsync_directory(directory)
    shutil.rmtree(trash, ignore_errors=True)


def _make_unique_directory(parent, prefix):
    """Like `tempfile.mkdtemp`, but with the umask's permissions."""
    while True:
        name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _remove_file(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
