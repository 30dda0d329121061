"""TrainingRun.write_scalars: values next to the training curves."""

import keras

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
