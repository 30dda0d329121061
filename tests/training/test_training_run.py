"""TrainingRun: windows and checkpoints at any cadence, an exact resume,
and scalars next to the training curves."""

import os
import re

import keras
import numpy as np
import tensorflow as tf

from sgmoe.distribute import processes
from sgmoe.training import TrainingRun
from tests.training.test_moe_tensorboard import read_events


def compiled_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_scalars_go_to_the_run_directory_at_the_optimizer_step(tmp_path):
    model = compiled_model()
    run = TrainingRun(model, train_steps=4, log_every=2,
                      model_dir=str(tmp_path), checkpoint_every=2)
    model.optimizer.iterations.assign(7)
    run.write_scalars({"bleu": 27.5, "chrf": 50})
    events = read_events(tmp_path / "logs" / "validation")
    assert sorted(events) == ["bleu", "chrf"]
    plugin, values = events["bleu"]
    assert plugin == "scalars" and list(values) == [7]
    assert float(values[7]) == 27.5
    run.write_scalars({"loss": 1.0}, run_name="test")
    assert list(read_events(tmp_path / "logs" / "test")) == ["loss"]


def test_nothing_is_written_without_a_directory_or_off_process_zero(
        tmp_path, monkeypatch):
    TrainingRun(compiled_model(), train_steps=2, log_every=2).write_scalars(
        {"bleu": 1.0})
    monkeypatch.setattr(processes, "is_primary_process", lambda: False)
    run = TrainingRun(compiled_model(), train_steps=2, log_every=2,
                      model_dir=str(tmp_path))
    run.write_scalars({"bleu": 1.0})
    assert not (tmp_path / "logs" / "validation").exists()


def stream(skip):
    """Batch i: x = rows of i, y = their sum; the same in every run."""
    def batch(i):
        x = tf.reshape(tf.range(6, dtype="int64") + i, (2, 3))
        x = tf.cast(x, "float32") / 10.0
        return x, tf.stack([tf.reduce_sum(x, axis=1)] * 2, axis=1)
    return tf.data.Dataset.range(10_000).skip(skip).map(batch)


def weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_any_cadence_ends_at_train_steps_and_resumes_exactly(
        tmp_path, capsys):
    keras.utils.set_random_seed(1)
    straight = compiled_model()
    TrainingRun(straight, train_steps=7, log_every=3,
                model_dir=str(tmp_path / "a"), checkpoint_every=5).fit(stream)
    # Logging windows of 3 steps, the last one cut short at step 7;
    # checkpoints at 5 and at the end.
    steps = re.findall(r"step=(\d+)", capsys.readouterr().out)
    assert steps == ["3", "6", "7"]
    assert int(straight.optimizer.iterations) == 7
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == [
        "latest", "step-5", "step-7"]

    keras.utils.set_random_seed(1)
    TrainingRun(compiled_model(), train_steps=5, log_every=3,
                model_dir=str(tmp_path / "b"), checkpoint_every=5).fit(stream)
    resumed = compiled_model()  # other weights until restored
    run = TrainingRun(resumed, train_steps=7, log_every=4,
                      model_dir=str(tmp_path / "b"), checkpoint_every=2)
    assert (run.first_step, run.remaining_steps) == (5, 2)
    run.fit(stream)
    assert int(resumed.optimizer.iterations) == 7
    for got, expected in zip(weights(resumed), weights(straight)):
        np.testing.assert_array_equal(got, expected)
    # Done: the same command again trains nothing.
    done = compiled_model()
    again = TrainingRun(done, train_steps=7, log_every=4,
                        model_dir=str(tmp_path / "b"))
    again.fit(stream)
    assert again.remaining_steps == 0
    assert int(done.optimizer.iterations) == 7
