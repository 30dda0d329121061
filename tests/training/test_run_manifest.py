"""Run manifests: a resume that refuses changed data and accepts a changed
cadence (directly and through TrainingRun); fingerprints; clear_run."""

import hashlib
import json
import os

import pytest
import tensorflow as tf

from sgmoe.data import DataError
from sgmoe.data import WordVocabulary
from sgmoe.training import RunMismatchError
from sgmoe.training import TrainingRun
from sgmoe.training import check_run_setup
from sgmoe.training import clear_run
from sgmoe.training import file_fingerprints
from sgmoe.training import record_run_setup
from sgmoe.training import shared_vocabulary
from sgmoe.training import run_manifest

SETUP = {"data": {"languages": ["de", "en"], "files": [{"file": "a",
                                                        "bytes": 3}]},
         "batch_size": 32}


def manifest(model_dir):
    with open(os.path.join(model_dir, "run.json")) as file:
        return json.load(file)


def test_a_changed_setup_is_refused_at_its_first_difference(tmp_path):
    check_run_setup(tmp_path, SETUP)  # nothing recorded: nothing to refuse
    record_run_setup(tmp_path, SETUP, {"train_steps": 10})
    check_run_setup(tmp_path, SETUP)
    swapped = dict(SETUP, data=dict(SETUP["data"], languages=["en", "de"]))
    with pytest.raises(RunMismatchError) as error:
        check_run_setup(tmp_path, swapped)
    assert str(error.value) == (
        f"{tmp_path} holds a run started with another setup: "
        'data.languages[0] was "de", now "en"; resume it with the setup it '
        "was started with, or start afresh in another model directory")
    with pytest.raises(RunMismatchError, match=r"batch_size was 32, now 64"):
        check_run_setup(tmp_path, dict(SETUP, batch_size=64))
    with pytest.raises(RunMismatchError, match=r"seed was nothing, now 1"):
        check_run_setup(tmp_path, dict(SETUP, seed=1))
    assert manifest(tmp_path)["setup"] == SETUP  # never rewritten


def test_training_run_refuses_another_setup_before_it_restores(tmp_path):
    import keras

    def model():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    run = TrainingRun(model(), train_steps=3, log_every=2,
                      model_dir=str(tmp_path), setup=SETUP)
    assert manifest(tmp_path) == {
        "format": "sgmoe-run", "version": 1, "setup": SETUP, "cadence": {
            "train_steps": 3, "log_every": 2, "checkpoint_every": 100}}
    run.fit(lambda skip: tf.data.Dataset.from_tensors(
        (tf.zeros((2, 3)), tf.zeros((2, 2)))).repeat())  # checkpoint at 3
    # Another cadence is recorded; another setup is refused.
    run = TrainingRun(model(), train_steps=37, log_every=3,
                      checkpoint_every=5, model_dir=str(tmp_path),
                      setup=SETUP)
    assert run.first_step == 3
    assert manifest(tmp_path)["cadence"] == {
        "train_steps": 37, "log_every": 3, "checkpoint_every": 5}
    before = manifest(tmp_path)
    with pytest.raises(RunMismatchError, match="batch_size was 32, now 8"):
        TrainingRun(model(), train_steps=37, log_every=3,
                    model_dir=str(tmp_path), setup=dict(SETUP, batch_size=8))
    assert manifest(tmp_path) == before


@pytest.mark.parametrize("text, message", [
    ("{", "not a readable run manifest"),
    ('{"format": "other", "setup": {}}', "not a run manifest"),
    ('{"format": "sgmoe-run", "version": 9, "setup": {}}', "version 9"),
])
def test_a_damaged_manifest_is_an_error(tmp_path, text, message):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        check_run_setup(tmp_path, SETUP)
    with pytest.raises(ValueError, match=message):
        record_run_setup(tmp_path, SETUP)
    assert (tmp_path / "run.json").read_text() == text


def test_fingerprints_see_every_byte_but_not_the_directory(tmp_path):
    (tmp_path / "x").mkdir()
    first = tmp_path / "train.txt"
    first.write_bytes(b"a b c\n" * 300_000)  # more than one read piece
    moved = tmp_path / "x" / "train.txt"
    moved.write_bytes(first.read_bytes())
    [print_a], [print_b] = file_fingerprints([first]), file_fingerprints(
        [moved])
    assert print_a == print_b == {
        "file": "train.txt", "bytes": 1_800_000,
        "sha256": hashlib.sha256(first.read_bytes()).hexdigest()}
    moved.write_bytes(b"a b c\n" * 299_999 + b"a b d\n")
    assert file_fingerprints([moved])[0]["sha256"] != print_a["sha256"]


def test_clear_run_removes_only_what_a_run_writes(tmp_path):
    for name in ("checkpoints", "logs", "model"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    for name in ("vocabulary.txt", "run.json", "notes.txt", ".lock"):
        (tmp_path / name).write_text("x")
    assert sorted(clear_run(tmp_path)) == [
        "checkpoints", "logs", "model", "run.json", "vocabulary.txt"]
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.txt"]


def test_a_run_without_its_vocabulary_is_refused(tmp_path):
    vocabulary = WordVocabulary(["a", "b"])
    built = shared_vocabulary(tmp_path, WordVocabulary, lambda: vocabulary)
    assert built.tokens == vocabulary.tokens
    record_run_setup(tmp_path, SETUP)
    os.remove(tmp_path / "vocabulary.txt")
    with pytest.raises(DataError, match=r"vocabulary\.txt: no such file, "
                       r"but .* holds a run trained with it"):
        shared_vocabulary(tmp_path, WordVocabulary,
                          lambda: WordVocabulary(["c"]))
    assert not (tmp_path / "vocabulary.txt").exists()
    assert run_manifest.MANIFEST_FILE in os.listdir(tmp_path)
