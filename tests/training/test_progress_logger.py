"""ProgressLogger: plain key=value lines with loss, perplexity and words/s."""

import keras
import numpy as np
import pytest

from sgmoe.training import ProgressLogger
from sgmoe.training import _logs
from tests.training.recording import STEP_SECONDS, FakeClock, Recorder

BATCH, TOKENS_PER_STEP = 2, 10


def parse(line):
    return dict(field.split("=", 1) for field in line.split())


def test_prints_fields_every_log_every_steps(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(_logs, "monotonic_clock", clock)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    rng = np.random.RandomState(0)
    x = rng.randn(5 * BATCH, 4).astype("float32")
    y = rng.randn(5 * BATCH, 1).astype("float32")
    recorder = Recorder()
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
        validation_data=(x[:4], y[:4]),
        callbacks=[clock, recorder, ProgressLogger(
            log_every=2, tokens_per_step=TOKENS_PER_STEP, total_steps=12)])

    lines = [parse(line) for line in capsys.readouterr().out.splitlines()]
    # Steps 2 and 4, the end of epoch 1 (step 5), steps 6 and 8, and the
    # end of epoch 2 (step 10, with the validation logs): the last step of
    # an epoch gets the epoch line only.
    assert [line.get("step") for line in lines] == [
        "2/12", "4/12", "5/12", "6/12", "8/12", "10/12"]
    # The fake clock's steps take 0.5 s: elapsed is steps / 2; the pace of
    # the ETA is that of the first window, then of the steps since it.
    assert [line["elapsed"] for line in lines] == [
        "0:00:01", "0:00:02", "0:00:02", "0:00:03", "0:00:04", "0:00:05"]
    assert [line["eta"] for line in lines] == [
        "0:00:05", "0:00:04", "0:00:04", "0:00:03", "0:00:02", "0:00:01"]
    assert ["val_loss" in line for line in lines] == [
        False, False, True, False, False, True]
    expected_words_per_second = TOKENS_PER_STEP / STEP_SECONDS
    for line in lines:
        assert float(line["words/s"]) == pytest.approx(
            expected_words_per_second)
        # Printed with 4 and 2 decimals.
        assert float(line["perplexity"]) == pytest.approx(
            np.exp(float(line["loss"])), rel=1e-4, abs=6e-3)
    for index, step in [(0, 2), (1, 4), (3, 6), (4, 8)]:
        assert set(lines[index]) == {"step", "loss", "perplexity",
                                     "words/s", "elapsed", "eta"}
        loss = recorder.steps[step]["logs"]["loss"]
        assert float(lines[index]["loss"]) == pytest.approx(loss, abs=1e-4)
    for index, epoch in [(2, 0), (5, 1)]:
        line = lines[index]
        assert float(line["loss"]) == pytest.approx(
            history.history["loss"][epoch], abs=1e-4)
        val_loss = history.history["val_loss"][epoch]
        assert float(line["val_loss"]) == pytest.approx(val_loss, abs=1e-4)
        assert float(line["val_perplexity"]) == pytest.approx(
            np.exp(val_loss), abs=6e-3)


def test_print_fn_and_no_token_count():
    lines = []
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 4), "float32")
    model.fit(x, x[:, :1], batch_size=2, epochs=1, verbose=0,
              callbacks=[ProgressLogger(log_every=1, print_fn=lines.append)])
    assert [parse(line)["step"] for line in lines] == ["1", "2"]
    assert all("words/s" not in parse(line) for line in lines)


def test_counts_every_step_of_an_execution():
    lines = []
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=3)
    x = np.ones((12, 4), "float32")
    model.fit(x, x[:, :1], batch_size=2, epochs=1, verbose=0,
              callbacks=[ProgressLogger(log_every=2, print_fn=lines.append)])
    # Keras reports steps 1-3 and 4-6 at once: lines after steps 3 and 6
    # (the epoch line).
    assert [parse(line)["step"] for line in lines] == ["3", "6"]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="log_every"):
        ProgressLogger(log_every=0)
    with pytest.raises(ValueError, match="tokens_per_step"):
        ProgressLogger(tokens_per_step="ten")
    with pytest.raises(ValueError, match="total_steps"):
        ProgressLogger(total_steps=0)
