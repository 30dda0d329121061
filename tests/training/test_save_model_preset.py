"""Saving the trained model: written by process 0, by every process."""

import os

import pytest

from sgmoe.distribute import processes
from sgmoe.training import save_model_preset


class RecordingModel:
    def __init__(self, version="1", fail=False):
        self.saved = []
        self.version = version
        self.fail = fail

    def save_to_preset(self, directory):
        os.makedirs(directory)
        self.saved.append(directory)
        with open(os.path.join(directory, "config.json"), "w") as file:
            file.write(self.version)
        if self.fail:
            raise OSError(28, "No space left on device")


def test_process_zero_swaps_the_whole_preset_in(tmp_path):
    final = tmp_path / "model"
    save_model_preset(RecordingModel("1"), final)
    assert (final / "config.json").read_text() == "1"
    model = RecordingModel("2")
    save_model_preset(model, final)
    # Written next to it, then renamed into place.
    [written] = model.saved
    assert os.path.dirname(written) == str(tmp_path) and written != final
    assert (final / "config.json").read_text() == "2"
    assert os.listdir(tmp_path) == ["model"]


def test_a_failed_save_leaves_the_previous_model(tmp_path):
    final = tmp_path / "model"
    save_model_preset(RecordingModel("1"), final)
    with pytest.raises(OSError, match="No space"):
        save_model_preset(RecordingModel("2", fail=True), final)
    assert (final / "config.json").read_text() == "1"
    assert os.listdir(tmp_path) == ["model"]


def test_other_processes_save_to_a_deleted_scratch_directory(
        tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "is_primary_process", lambda: False)
    model = RecordingModel()
    save_model_preset(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    [scratch] = model.saved
    assert not os.path.exists(scratch)
