"""Saving a trained model from every process of a run, written once."""

import os
import shutil
import tempfile

from sgmoe import _files
from sgmoe.distribute import processes


def save_model_preset(model, preset_dir, extra_files=None, **preset_args):
    """Writes `model.save_to_preset(preset_dir)` from process 0 only.

    The directory is written next to `preset_dir` and swapped in whole, so
    a kill during the save leaves the previous model (or none), never a
    half-written one.

    Every process of a multi-process run must call it: reading weights
    that span processes is a collective. Process 0 writes `preset_dir`;
    the others save to a scratch directory that is then deleted. On one
    process it is `model.save_to_preset(preset_dir)`.

    Args:
        model: an sgmoe model with `save_to_preset`.
        preset_dir: the directory to write (e.g. `<model_dir>/model`).
        extra_files: {file name: text} written into the directory with
            the model (and swapped in with it), or None.
        **preset_args: arguments of `save_to_preset` (`vocabulary`,
            `metadata`).

    Example:

    save_model_preset(model, "/tmp/lm/model")
    MoELanguageModel.from_preset("/tmp/lm/model")
    """
    if processes.is_primary_process():
        def write(directory):
            model.save_to_preset(directory, **preset_args)
            for name, text in (extra_files or {}).items():
                with open(os.path.join(directory, name), "w") as file:
                    file.write(text)

        _files.replace_directory(write, preset_dir)
        return
    scratch = tempfile.mkdtemp(prefix="sgmoe-save-")
    try:
        model.save_to_preset(os.path.join(scratch, "model"), **preset_args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
