"""StopOnNonFiniteLoss: stops at the bad step and keeps the last checkpoint."""

import math

import keras
import numpy as np
import pytest

from sgmoe.training import NonFiniteLossError, StopOnNonFiniteLoss
from tests.training.recording import Recorder

BATCH = 2


def build_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


@pytest.mark.parametrize("bad_value, is_bad", [
    (np.nan, math.isnan),
    (1e30, math.isinf),  # squared, overflows float32 to inf
])
def test_stops_at_the_bad_step_before_the_checkpoint(tmp_path, bad_value,
                                                     is_bad):
    rng = np.random.RandomState(0)
    x = rng.randn(6 * BATCH, 4).astype("float32")
    y = rng.randn(6 * BATCH, 1).astype("float32")
    x[3 * BATCH:4 * BATCH] = bad_value  # the 4th batch
    checkpoint_path = str(tmp_path / "model.weights.h5")
    model = build_model()
    recorder = Recorder()
    with pytest.raises(NonFiniteLossError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[
                      recorder, StopOnNonFiniteLoss(),
                      # Would save the broken weights after step 4.
                      keras.callbacks.ModelCheckpoint(
                          checkpoint_path, save_weights_only=True,
                          save_freq=2)])

    error = raised.value
    assert (error.step, error.epoch) == (4, 1)
    assert is_bad(error.loss)
    assert f"loss is {error.loss} at step 4 (epoch 1, batch 4" in str(error)
    assert "last good" in str(error)
    assert model.stop_training
    assert sorted(recorder.steps) == [1, 2, 3, 4]
    assert np.isfinite(recorder.steps[3]["logs"]["loss"])
    assert not all(np.isfinite(w).all()
                   for w in recorder.steps[4]["weights"])

    # The checkpoint on disk is the one of step 2, finite.
    restored = build_model()
    restored.load_weights(checkpoint_path)
    for weight, expected in zip(restored.get_weights(),
                                recorder.steps[2]["weights"]):
        assert np.isfinite(weight).all()
        np.testing.assert_array_equal(weight, expected)


def test_steps_count_across_fits_and_finite_runs_pass():
    model = build_model()
    rng = np.random.RandomState(1)
    x = rng.randn(3 * BATCH, 4).astype("float32")
    y = rng.randn(3 * BATCH, 1).astype("float32")
    stopper = StopOnNonFiniteLoss()
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
              callbacks=[stopper])
    assert not model.stop_training
    x[:BATCH] = np.nan
    with pytest.raises(NonFiniteLossError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False,
                  verbose=0, callbacks=[stopper])
    assert (raised.value.step, raised.value.epoch) == (7, 1)


def test_rejects_bad_monitor():
    with pytest.raises(ValueError, match="monitor"):
        StopOnNonFiniteLoss(monitor="")
