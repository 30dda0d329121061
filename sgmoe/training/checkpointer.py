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
from sgmoe.layers.moe_layer import find_moe_layers
from sgmoe.training import _logs

FORMAT = "sgmoe-checkpoint"
VERSION = 2
STATE_FILE = "state.npz"  # format 1: every variable whole, in one file
MANIFEST_FILE = "checkpoint.json"
LATEST_FILE = "latest"
_INDEX_FILE = "index-{}.json"  # one process's shards, until merged
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
    (`.tmp-step-<n>`), each file and the directory are fsynced, a manifest
    (`checkpoint.json`, with the size and SHA-256 of every file) is written
    last, and `os.replace` renames the directory into place. The `latest`
    file is then replaced atomically by one naming the new checkpoint, and
    only then are checkpoints beyond the newest `keep` deleted (renamed
    away first, so a half-deleted one never looks complete). A directory
    named `step-<n>` therefore always holds a whole checkpoint; temporary
    directories left by a kill are ignored and removed by `restore`.

    Each variable is stored as the shards it is split into on the device
    mesh, one `.npy` file per distinct shard (`model_<i>.npy` for a
    variable on one device, `model_<i>.<start offsets>.npy` for a shard),
    and the manifest records which slice of which variable each file
    holds. Nothing is assembled whole to save it, so a save needs host
    memory for one shard at a time, not for the model. `restore` reads
    (memory-maps) only the saved shards that overlap what each device of
    the target holds, whatever mesh wrote them: a checkpoint written on a
    mesh of N devices restores on a mesh of M devices of another shape or
    on one device, and the other way round. Checkpoints of the previous
    format (version 1, one `state.npz`) still restore.

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
       (`stream.skip(n)`, or cheaper, start at epoch n * batch // examples),
       cut to the steps left (`.take(train_steps - state.step)`), with
       `steps_per_epoch=S` (Keras epochs are then just logging windows of S
       steps; the last one ends when the stream does) and
       `epochs=ceil(steps left / S)`. Checkpoints fall at multiples of
       `checkpoint_every`, inside windows or at their ends: the training
       state does not depend on where windows end. `TrainingRun` does all
       of this.

    Only one run may write a `model_dir` at a time (`TrainingRun` takes
    its lock, `lock_model_dir`). `fit` refuses to
    start (ValueError) if the directory holds checkpoints newer than the
    model and `restore` was not called, so a forgotten `restore` cannot
    overwrite a run.

    Several processes (JAX after `jax.distributed.initialize`, e.g.
    `--multi_host`): every process runs the callback and writes the shards
    it holds (each distinct shard once: the copy with `replica_id` 0) and
    an index of them into the same temporary directory; after a barrier
    process 0 merges the indexes into the manifest and renames the
    directory into place, and all leave `save` together once the
    checkpoint is complete. No process gathers another's shards, so no
    host ever holds more than its own part of the state. `model_dir` must
    be on a file system every process sees. Each process restores the
    shards its devices hold, after checking the SHA-256 of the files it
    reads; the processes agree (a collective) on whether a checkpoint
    passed, so all restore the same one. With one process, a mesh of
    virtual devices (`--xla_force_host_platform_device_count`) takes the
    same per-shard path; on TensorFlow, where `keras.distribution` shards
    nothing, every variable is one file.

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
        left by a killed write are removed. Each variable gets its current
        sharding, its devices' slices read from the saved shards that
        overlap them. A checkpoint that fails its checks (missing or
        truncated file, checksum mismatch of a file this process reads,
        shards that do not tile a variable, unreadable manifest) is
        reported with a `RuntimeWarning` naming it and the problem, and the
        previous one is tried; with several processes, all call `restore`
        and skip a checkpoint that any of them found corrupt.

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
            problem = None
            try:
                saved = _open_checkpoint(path, step)
                plan = _plan_restore(model, saved, path)
                saved.verify(plan.files)
            except _CorruptCheckpoint as error:
                problem = str(error)
            problem = _agree_across_processes(problem)
            if problem is not None:
                problems.append((path, problem))
                continue
            for skipped, problem in problems:  # said once, if resumed
                warnings.warn(
                    f"Checkpoint {skipped} is corrupt and was skipped: "
                    f"{problem}. Resuming from {path}.", RuntimeWarning,
                    stacklevel=2)
            self._assign(saved, plan, path)
            manifest = saved.manifest
            self.data_position = int(manifest["data_position"])
            self.last_saved_step = int(manifest["step"])
            return CheckpointState(step=int(manifest["step"]),
                                   data_position=self.data_position,
                                   path=path)
        if problems:
            raise CheckpointError(
                f"No usable checkpoint in {self.directory}; every one failed "
                "its checks:\n  " + "\n  ".join(
                    f"{path}: {problem}" for path, problem in problems)
                + "\nMove the directory away to start training from "
                "scratch.")
        self.data_position = 0
        self.last_saved_step = None
        return None

    def _assign(self, saved, plan, path):
        # Every check passed before anything is assigned; one variable's
        # new value at a time, so the old one can go before the next.
        for variable, name, dtype, pieces in plan.targets:
            variable.assign(saved.value(name, variable, dtype, pieces))
        saved_random = saved.manifest.get("random_states", {})
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
        `step` defaults to the optimizer's `iterations`. With several
        processes, every process must call it (it waits for all).
        """
        model = self.model  # syncs the variables on JAX
        if step is None:
            step = _optimizer_step(model)
        final = os.path.join(self.directory, f"step-{step}")
        # One name all processes know without talking; only one run
        # writes a model_dir, so one left here is a killed write's.
        temporary = os.path.join(self.directory,
                                 f"{_TEMP_PREFIX}step-{step}")
        primary = processes.is_primary_process()
        if primary:
            os.makedirs(self.directory, exist_ok=True)
            _remove_tree(temporary)
            os.mkdir(temporary)
        processes.wait_for_all_processes(f"sgmoe checkpoint {final} begin")
        shards = _write_shards(temporary, _state_variables(model))
        _write_synced(
            os.path.join(temporary,
                         _INDEX_FILE.format(processes.process_index())),
            json.dumps(shards).encode("utf-8"))
        processes.wait_for_all_processes(f"sgmoe checkpoint {final} shards")
        if primary:
            self._commit(self._manifest(model, step), temporary, step, final)
        processes.wait_for_all_processes(f"sgmoe checkpoint {final}")
        self.last_saved_step = step
        return final

    def _commit(self, manifest, temporary, step, final):
        """Merges the processes' shard indexes into the manifest, writes
        it last and renames the directory into place (process 0)."""
        files, shards = {}, {}
        for process in range(_process_count()):
            index_path = os.path.join(temporary, _INDEX_FILE.format(process))
            with open(index_path, "rb") as file:
                entries = json.loads(file.read().decode("utf-8"))
            for entry in entries:
                files[entry["file"]] = {"size": entry["size"],
                                        "sha256": entry["sha256"]}
                shards.setdefault(entry["variable"], []).append(
                    {key: entry[key] for key in ("file", "start", "shape")})
            os.remove(index_path)
        for entries in shards.values():
            entries.sort(key=lambda entry: entry["start"])
        manifest["files"] = dict(sorted(files.items()))
        manifest["shards"] = dict(sorted(shards.items()))
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

    def _manifest(self, model, step):
        """The manifest without its "files" and "shards"."""
        specs = {"model": [], "optimizer": []}
        for name, variable in _state_variables(model):
            specs[name.split("_")[0]].append({
                "path": variable.path, "shape": list(variable.shape),
                "dtype": keras.backend.standardize_dtype(variable.dtype)})
        return {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "data_position": int(self.data_position),
            "epoch": int(self._epoch),
            "backend": keras.backend.backend(),
            "processes": _process_count(),
            "time": time.time(),
            "model_variables": specs["model"],
            "optimizer_variables": specs["optimizer"],
            "random_states": {
                name: _to_json(_get_random_state(generator))
                for name, generator in self.random_states.items()},
        }

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


# -- writing shards ---------------------------------------------------------

def _state_variables(model):
    """[(name, variable)]: "model_<i>" for the model's variables, then
    "optimizer_<i>" for a built optimizer's (the names in file names and
    in the manifest's "shards")."""
    named = [(f"model_{index}", variable)
             for index, variable in enumerate(model.variables)]
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        named += [(f"optimizer_{index}", variable)
                  for index, variable in enumerate(optimizer.variables)]
    return named


def _write_shards(directory, named_variables):
    """Writes this process's shards of every variable into `directory`,
    one fsynced `.npy` file each, one at a time.

    Returns their index: [{"variable", "file", "start", "shape", "size",
    "sha256"}], "start" the shard's offsets in the variable.
    """
    index = []
    for name, variable in named_variables:
        shape = tuple(variable.shape)
        for start, array in _local_shards(variable.value):
            file = _shard_file(name, start, array.shape, shape)
            summary = _save_array(os.path.join(directory, file),
                                  _encode_array(array))
            index.append({"variable": name, "file": file,
                          "start": list(start), "shape": list(array.shape),
                          **summary})
    _fsync_directory(directory)
    return index


def _local_shards(value):
    """(start offsets, NumPy array) of each part of a variable's value this
    process writes.

    On JAX, the distinct shards on this process's devices: of the copies
    of a shard (a replicated weight has one per device), only the one with
    `replica_id` 0, so every part of the variable is written once across
    all processes. Elsewhere, the whole value, by process 0 alone.
    """
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(value, jax.Array):
            for shard in value.addressable_shards:
                if shard.replica_id == 0:
                    start = tuple(index.indices(size)[0] for index, size
                                  in zip(shard.index, value.shape))
                    yield start, _to_host(shard.data)
            return
    if processes.is_primary_process():
        yield (0,) * len(value.shape), np.asarray(ops.convert_to_numpy(value))


def _to_host(data):
    """A one-device jax.Array as a NumPy array. A CPU buffer is shared,
    not copied; another device's is copied through a new CPU array, since
    NumPy conversion of `data` itself would keep a host copy cached on it
    (for as long as the variable holds it)."""
    import jax

    (device,) = data.devices()
    if device.platform != "cpu":
        data = jax.device_put(data, jax.devices("cpu")[0])
    return np.asarray(data)


def _shard_file(name, start, shard_shape, shape):
    """"<name>.npy" for a whole variable, else "<name>.<start>.npy" with
    the offsets joined by "_", e.g. "model_3.16_0_0.npy"."""
    if tuple(shard_shape) == tuple(shape):
        return f"{name}.npy"
    return f"{name}.{'_'.join(str(offset) for offset in start)}.npy"


def _encode_array(value):
    if value.dtype.isbuiltin != 1:
        # ml_dtypes (bfloat16, float8) do not survive .npy: store the bits.
        value = value.view(f"uint{8 * value.dtype.itemsize}")
    return value


class _HashingWriter:
    """A file's `write`, counting the bytes and hashing them on the way."""

    def __init__(self, file):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)


def _save_array(path, array):
    """Writes `array` as a fsynced `.npy` file (16 MiB at a time); returns
    {"size", "sha256"} of the file."""
    with open(path, "wb") as file:
        writer = _HashingWriter(file)
        np.lib.format.write_array(writer, array, allow_pickle=False)
        file.flush()
        os.fsync(file.fileno())
    return {"size": writer.size, "sha256": writer.sha256.hexdigest()}


# -- reading ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Shard:
    """A saved part of a variable: its offsets and shape in the variable,
    and its `.npy` file (format 2) or its array (format 1, read whole)."""

    start: tuple
    shape: tuple
    file: str = None
    array: np.ndarray = None


class _SavedState:
    """A checkpoint's manifest and the saved shards of each variable."""

    def __init__(self, path, manifest, shards):
        self.path = path
        self.manifest = manifest
        self.shards = shards  # {"model_<i>": [_Shard]}
        self._by_file = {shard.file: shard for entries in shards.values()
                         for shard in entries if shard.file is not None}

    def files_for(self, name, pieces):
        """Names of the files of variable `name` that overlap any of
        `pieces` (each ((starts), (stops)))."""
        files = set()
        for piece in pieces:
            for shard in self.shards[name]:
                if shard.file is not None and (
                        _overlap(shard, piece) is not None
                        or _volume(piece) == 0):
                    files.add(shard.file)
                    if _volume(piece) == 0:
                        break
        return files

    def verify(self, files):
        """Checks the SHA-256 and the array shape of each of `files`;
        raises _CorruptCheckpoint."""
        for name in sorted(files):
            file_path = os.path.join(self.path, name)
            _check_sha256(file_path, name, self.manifest["files"][name])
            try:
                shape = np.load(file_path, mmap_mode="r",
                                allow_pickle=False).shape
            except (OSError, ValueError) as error:
                raise _CorruptCheckpoint(
                    f"{name} is unreadable ({error})") from None
            if shape != self._by_file[name].shape:
                raise _CorruptCheckpoint(
                    f"{name} holds shape {shape}, {MANIFEST_FILE} says "
                    f"{self._by_file[name].shape}")

    def read(self, name, piece):
        """The slice `piece` ((starts), (stops)) of variable `name` as
        stored (low-precision floats as unsigned bits), assembled from the
        saved shards that overlap it; only those are read, memory-mapped."""
        starts, stops = piece
        shape = [stop - begin for begin, stop in zip(starts, stops)]
        result = None
        for shard in self.shards[name]:
            overlap = _overlap(shard, piece)
            if overlap is None:
                continue
            source = self._array(shard)
            if result is None:
                result = np.empty(shape, source.dtype)
            low, high = overlap
            result[tuple(slice(a - begin, b - begin) for a, b, begin
                         in zip(low, high, starts))] = source[
                tuple(slice(a - begin, b - begin) for a, b, begin
                      in zip(low, high, shard.start))]
        if result is None:  # an empty slice
            result = np.empty(shape, self._array(self.shards[name][0]).dtype)
        return result

    def value(self, name, variable, dtype, pieces):
        """The value to assign to `variable` (saved as `name`, of `dtype`).

        With `pieces` (its value is a jax.Array), a jax.Array with the same
        sharding, each device's slice assembled from the saved shards, so
        no process holds what its devices do not; else a NumPy array.
        """
        shape = tuple(variable.shape)
        if pieces is None:
            return _decode_array(self.read(name, _whole_piece(shape)), dtype)
        import jax

        assembled = {}

        def device_slice(index):
            piece = _piece(index, shape)
            if piece not in assembled:  # replicas share one host copy
                assembled[piece] = _decode_array(self.read(name, piece),
                                                 dtype)
            return assembled[piece]

        return jax.make_array_from_callback(shape, variable.value.sharding,
                                            device_slice)

    def _array(self, shard):
        if shard.array is not None:
            return shard.array
        return np.load(os.path.join(self.path, shard.file), mmap_mode="r",
                       allow_pickle=False)


@dataclasses.dataclass
class _RestorePlan:
    """targets: (variable, saved name, saved dtype, pieces or None) for
    every variable to assign; files: the files they read."""

    targets: list
    files: set


def _plan_restore(model, saved, path):
    """What restoring `saved` into `model` reads, after checking that its
    variables fit the model (ValueError). Builds the optimizer first if
    the checkpoint has optimizer state."""
    manifest = saved.manifest
    optimizer = getattr(model, "optimizer", None)
    saved_optimizer = manifest["optimizer_variables"]
    if optimizer is not None and saved_optimizer and not optimizer.built:
        optimizer.build(model.trainable_variables)
    groups = [("model", _model_variables(model, manifest["model_variables"]),
               manifest["model_variables"])]
    if optimizer is not None and saved_optimizer:
        groups.append(("optimizer", optimizer.variables, saved_optimizer))
    for group, variables, specs in groups:
        _check_specs(group, variables, specs, path)
    targets, files = [], set()
    for group, variables, specs in groups:
        for index, (variable, spec) in enumerate(zip(variables, specs)):
            name = f"{group}_{index}"
            pieces = _target_pieces(variable)
            targets.append((variable, name, spec["dtype"], pieces))
            files |= saved.files_for(
                name, pieces or [_whole_piece(tuple(variable.shape))])
    return _RestorePlan(targets, files)


def _model_variables(model, specs):
    """The model's variables that `specs` describe: all of them, or, for a
    checkpoint written before MoE layers had the statistics of
    `MoELayer.statistics_added_later`, the others (which then keep their
    values)."""
    variables = model.variables
    if len(variables) == len(specs):
        return variables
    later = {id(variable) for layer in find_moe_layers(model).values()
             for variable in getattr(layer, "statistics_added_later", ())}
    older = [variable for variable in variables if id(variable) not in later]
    # `_check_specs` then compares shapes and dtypes, or reports the
    # mismatch of counts.
    return older if len(older) == len(specs) else variables


def _target_pieces(variable):
    """The distinct slices ((starts), (stops)) of `variable` that this
    process's devices hold, when its value is a jax.Array; else None."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    value = variable.value
    if not isinstance(value, jax.Array):
        return None
    shape = tuple(variable.shape)
    indices = value.sharding.addressable_devices_indices_map(shape).values()
    return sorted({_piece(index, shape) for index in indices})


def _piece(index, shape):
    """A device's index (a tuple of slices) as ((starts), (stops))."""
    bounds = [part.indices(size)[:2] for part, size in zip(index, shape)]
    return (tuple(begin for begin, _ in bounds),
            tuple(stop for _, stop in bounds))


def _whole_piece(shape):
    return (0,) * len(shape), tuple(shape)


def _volume(piece):
    return math.prod(stop - begin for begin, stop in zip(*piece))


def _overlap(shard, piece):
    """((low), (high)) where `shard` and `piece` overlap, None if they do
    not (or the overlap is empty)."""
    starts, stops = piece
    low = tuple(max(a, b) for a, b in zip(shard.start, starts))
    high = tuple(min(a + size, b) for a, size, b
                 in zip(shard.start, shard.shape, stops))
    if any(a >= b for a, b in zip(low, high)):
        return None
    return low, high


def _agree_across_processes(problem):
    """`problem`, or one of its own on every process when any process of
    a JAX multi-process run found one (a collective: all call it), so
    that all skip the same checkpoints."""
    if _process_count() == 1:
        return problem
    from jax.experimental import multihost_utils

    failed = multihost_utils.process_allgather(
        np.array([problem is not None], dtype=np.int32))
    if problem is None and np.any(failed):
        return "another process found it corrupt (see its warning)"
    return problem


def _process_count():
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_count()
    return 1


def _open_checkpoint(path, step):
    """The checkpoint in `path` as a `_SavedState`.

    Checks the manifest, that every file it lists exists with its size,
    and that the saved shards of every variable tile it exactly; the
    SHA-256 of the files is checked by `verify`. Format 1 (one
    `state.npz`) is read and checked whole here, as it was written.
    Raises _CorruptCheckpoint.
    """
    manifest = _read_manifest(path, step)
    for name, expected in manifest["files"].items():
        _check_size(os.path.join(path, name), name, expected)
    if manifest["version"] == 1:
        return _open_format_1(path, manifest)
    shards = {}
    try:
        for group in ("model", "optimizer"):
            for index, spec in enumerate(manifest[f"{group}_variables"]):
                name = f"{group}_{index}"
                if name not in manifest["shards"]:
                    raise _CorruptCheckpoint(
                        f"{MANIFEST_FILE} has no shards of {group} variable "
                        f"{index}")
                shards[name] = [
                    _Shard(start=tuple(int(offset)
                                       for offset in entry["start"]),
                           shape=tuple(int(size) for size in entry["shape"]),
                           file=entry["file"])
                    for entry in manifest["shards"][name]]
                _check_tiling(name, shards[name], tuple(spec["shape"]),
                              manifest["files"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _CorruptCheckpoint(
            f"{MANIFEST_FILE} is malformed ({error!r})") from None
    return _SavedState(path, manifest, shards)


def _check_tiling(name, shards, shape, files):
    """Raises _CorruptCheckpoint unless `shards` tile `shape` exactly."""
    for shard in shards:
        if shard.file not in files:
            raise _CorruptCheckpoint(
                f"{MANIFEST_FILE} does not list {shard.file}")
        if (len(shard.start) != len(shape) or len(shard.shape) != len(shape)
                or any(begin < 0 or size < 0 or begin + size > total
                       for begin, size, total
                       in zip(shard.start, shard.shape, shape))):
            raise _CorruptCheckpoint(
                f"{shard.file} lies outside {name}'s shape {shape}")
    for first, shard in enumerate(shards):
        for other in shards[first + 1:]:
            if _overlap(other, (shard.start, tuple(
                    begin + size for begin, size
                    in zip(shard.start, shard.shape)))) is not None:
                raise _CorruptCheckpoint(
                    f"{shard.file} and {other.file} overlap")
    if sum(math.prod(shard.shape) for shard in shards) != math.prod(shape):
        raise _CorruptCheckpoint(
            f"the shards of {name} do not cover its shape {shape}")


def _open_format_1(path, manifest):
    """A format-1 checkpoint (one state.npz, SHA-256 checked), read
    whole."""
    for name, expected in manifest["files"].items():
        _check_sha256(os.path.join(path, name), name, expected)
    try:
        with np.load(os.path.join(path, STATE_FILE),
                     allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, KeyError, EOFError,
            zipfile.BadZipFile) as error:
        raise _CorruptCheckpoint(f"{STATE_FILE} is unreadable ({error})") \
            from None
    shards = {}
    for group in ("model", "optimizer"):
        for index in range(len(manifest[f"{group}_variables"])):
            name = f"{group}_{index}"
            if name not in arrays:
                raise _CorruptCheckpoint(
                    f"{STATE_FILE} lacks {group} variable {index}")
            array = arrays[name]
            shards[name] = [_Shard(start=(0,) * array.ndim,
                                   shape=array.shape, array=array)]
    return _SavedState(path, manifest, shards)


def _read_manifest(path, step):
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
    if manifest.get("version") not in (1, VERSION):
        raise _CorruptCheckpoint(
            f"format version {manifest.get('version')!r}, expected 1 or "
            f"{VERSION}")
    keys = ["step", "data_position", "files", "model_variables",
            "optimizer_variables"]
    if manifest["version"] >= 2:
        keys.append("shards")
    for key in keys:
        if key not in manifest:
            raise _CorruptCheckpoint(f"{MANIFEST_FILE} has no {key!r}")
    if manifest["step"] != step:
        raise _CorruptCheckpoint(
            f"{MANIFEST_FILE} says step {manifest['step']}, the directory "
            f"name step {step}")
    return manifest


def _check_size(file_path, name, expected):
    if not os.path.isfile(file_path):
        raise _CorruptCheckpoint(f"{name} is missing")
    size = os.path.getsize(file_path)
    if size != expected.get("size"):
        raise _CorruptCheckpoint(
            f"{name} has {size} bytes, expected {expected.get('size')} "
            "(truncated?)")


def _check_sha256(file_path, name, expected):
    try:
        actual = _file_summary(file_path)
    except OSError as error:
        raise _CorruptCheckpoint(f"{name} is unreadable ({error})") from None
    if actual["sha256"] != expected.get("sha256"):
        raise _CorruptCheckpoint(f"{name} fails its SHA-256 check")


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


def _remove_tree(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        _remove_file(path)


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
