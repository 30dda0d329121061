"""Saving the trained model: written by process 0, by every process."""

import os

from sgmoe.distribute import processes
from sgmoe.training import save_model_preset


class RecordingModel:
    def __init__(self):
        self.saved = []

    def save_to_preset(self, directory):
        os.makedirs(directory)
        self.saved.append(directory)


def test_process_zero_writes_the_preset(tmp_path):
    model = RecordingModel()
    save_model_preset(model, tmp_path / "model")
    assert model.saved == [str(tmp_path / "model")]


def test_other_processes_save_to_a_deleted_scratch_directory(
        tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "is_primary_process", lambda: False)
    model = RecordingModel()
    save_model_preset(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    [scratch] = model.saved
    assert not os.path.exists(scratch)
