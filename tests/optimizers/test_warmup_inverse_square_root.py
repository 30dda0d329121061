"""The paper's learning-rate schedules, value by value."""

import keras
import pytest

from sgmoe.optimizers import WarmupInverseSquareRoot


@pytest.mark.parametrize("warmup, hold, steps_and_rates", [
    # Language models: 1000 warm-up steps, then 1/sqrt(step).
    (1000, 0, [(1, 1e-3 / 1000), (500, 0.5e-3), (1000, 1e-3),
               (4000, 0.5e-3), (16000, 0.25e-3)]),
    # Translation: 2000 warm-up, 8000 constant, then 1/sqrt(step).
    (2000, 8000, [(1000, 0.5e-3), (2000, 1e-3), (9000, 1e-3),
                  (10000, 1e-3), (40000, 0.5e-3)]),
])
def test_schedule_values(warmup, hold, steps_and_rates):
    schedule = WarmupInverseSquareRoot(1e-3, warmup_steps=warmup,
                                       constant_steps=hold)
    for step, rate in steps_and_rates:
        # Keras calls the schedule with the number of completed steps.
        assert float(schedule(step - 1)) == pytest.approx(rate, rel=1e-5), step


def test_serializes_inside_an_optimizer():
    schedule = WarmupInverseSquareRoot(2e-3, warmup_steps=10, constant_steps=5)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    config = optimizer.get_config()
    assert config["learning_rate"]["class_name"] == "WarmupInverseSquareRoot"
    clone = keras.optimizers.Adam.from_config(config)
    # At step 0 both give the first warm-up rate, peak / warmup_steps.
    assert float(clone.learning_rate) == pytest.approx(2e-4, rel=1e-6)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule))
    assert restored.get_config() == schedule.get_config()


@pytest.mark.parametrize("kwargs, argument", [
    (dict(peak_learning_rate=0.0), "peak_learning_rate"),
    (dict(peak_learning_rate=1e-3, warmup_steps=0), "warmup_steps"),
    (dict(peak_learning_rate=1e-3, constant_steps=-1), "constant_steps"),
])
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        WarmupInverseSquareRoot(**kwargs)
