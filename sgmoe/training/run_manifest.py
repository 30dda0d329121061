"""What a training run was started with, so a resume cannot change it."""

import hashlib
import json
import os
import shutil

from sgmoe import _files
from sgmoe.distribute import processes

MANIFEST_FILE = "run.json"
FORMAT = "sgmoe-run"
VERSION = 1
# What a run writes into its model directory (`clear_run` removes these).
RUN_ENTRIES = ("checkpoints", "logs", "model", "best", "vocabulary.txt",
               "subwords.model", MANIFEST_FILE)
_MISSING = object()


class RunMismatchError(ValueError):
    """A model directory holds a run started with another setup."""


def check_run_setup(model_dir, setup):
    """Raises if `model_dir` holds a run started with another `setup`.

    `setup` is what must stay the same for a resumed run to continue the
    same training: the data files' sizes and hashes, the vocabulary, the
    model configuration, batch size, seed, optimizer. It is compared with
    the one `record_run_setup` wrote in `model_dir/run.json` at the run's
    first start; without that file (a fresh directory, or one written
    before manifests existed) there is nothing to compare. `TrainingRun`
    calls both.

    Args:
        model_dir: the run's directory.
        setup: a JSON-serialisable dict (nested dicts and lists allowed).

    Raises:
        RunMismatchError: `setup` differs from the recorded one; the
            message names the first differing entry, e.g.
            `data.languages[0] was "de", now "en"`.
        ValueError: `run.json` exists but is not a manifest.

    Example:

    setup = {"train_files": file_fingerprints(["data/brown.train.txt.gz"]),
             "batch_size": 32}
    check_run_setup("/tmp/lm", setup)
    """
    setup = _json_copy(setup, "setup")
    recorded = read_manifest(model_dir)
    if recorded is None:
        return
    difference = _first_difference(recorded["setup"], setup)
    if difference is not None:
        key, old, new = difference
        raise RunMismatchError(
            f"{model_dir} holds a run started with another setup: {key} "
            f"was {_short(old)}, now {_short(new)}; resume it with the "
            "setup it was started with, or start afresh in another "
            "model directory")


def record_run_setup(model_dir, setup, cadence=None):
    """Writes `model_dir/run.json` (atomically) unless it already holds
    `setup` and `cadence`.

    Call `check_run_setup` first: the recorded setup is replaced. `cadence`
    is what may change between resumes (steps, how often to log and
    checkpoint); the newest is recorded. Only process 0 writes.
    """
    setup = _json_copy(setup, "setup")
    cadence = _json_copy(cadence or {}, "cadence")
    recorded = read_manifest(model_dir)
    if (recorded is not None and recorded["setup"] == setup
            and recorded.get("cadence") == cadence):
        return
    if processes.is_primary_process():
        _files.write_text_atomically(
            os.path.join(os.fspath(model_dir), MANIFEST_FILE),
            json.dumps({"format": FORMAT, "version": VERSION,
                        "setup": setup, "cadence": cadence},
                       indent=1, sort_keys=True) + "\n")


def read_manifest(model_dir):
    """The manifest `check_run_setup` wrote in `model_dir`, or None.

    Raises:
        ValueError: the file exists but is not such a manifest.
    """
    path = os.path.join(os.fspath(model_dir), MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable run manifest ({error})")
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not isinstance(manifest.get("setup"), dict)):
        raise ValueError(f"{path}: not a run manifest (no {FORMAT!r} format "
                         "and setup)")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: run manifest version "
                         f"{manifest.get('version')!r}, expected {VERSION}")
    return manifest


def file_fingerprints(paths):
    """[{"file": base name, "bytes": size, "sha256": hex digest}] per path.

    The digest covers every byte (read in 1 MiB pieces, about 1 s per GB),
    so an edited, truncated or replaced file is told apart from the one a
    run started with; the directory is left out, so moving the data does
    not change the fingerprint.
    """
    fingerprints = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for piece in iter(lambda: file.read(1 << 20), b""):
                digest.update(piece)
        fingerprints.append({"file": os.path.basename(path),
                             "bytes": os.path.getsize(path),
                             "sha256": digest.hexdigest()})
    return fingerprints


def clear_run(model_dir):
    """Deletes what a training run wrote in `model_dir` (see RUN_ENTRIES).

    Other files in the directory, and the lock, are left alone. Returns the
    names removed.
    """
    removed = []
    for name in RUN_ENTRIES:
        path = os.path.join(os.fspath(model_dir), name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def _json_copy(value, name):
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be JSON-serialisable: {error}")


def _first_difference(old, new, key=""):
    """(key path, old value, new value) of the first difference, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            path = f"{key}.{name}" if key else name
            if name not in old or name not in new:
                return path, old.get(name, _MISSING), new.get(name, _MISSING)
            difference = _first_difference(old[name], new[name], path)
            if difference:
                return difference
        return None
    if (isinstance(old, list) and isinstance(new, list)
            and len(old) == len(new)):
        for index, (a, b) in enumerate(zip(old, new)):
            difference = _first_difference(a, b, f"{key}[{index}]")
            if difference:
                return difference
        return None
    return None if old == new else (key, old, new)


def _short(value, limit=120):
    if value is _MISSING:
        return "nothing"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."
