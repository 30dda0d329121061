"""The paper's learning-rate schedules: warm-up, hold, inverse square root."""

import keras
from keras import ops

from sgmoe import _validation


@keras.saving.register_keras_serializable(package="sgmoe")
class WarmupInverseSquareRoot(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, optional constant stretch, then 1/sqrt(step) decay.

    With s the step (counted from 1), W = `warmup_steps` and
    H = W + `constant_steps`:

        lr(s) = peak * s / W           for s <= W
        lr(s) = peak                   for W < s <= H
        lr(s) = peak * sqrt(H / s)     for s > H

    so the rate is continuous and proportional to the inverse square root of
    the step number after the hold. The paper's schedules (Shazeer et al.
    2017):

    * language models (Appendix C.1): `warmup_steps=1000`, `constant_steps=0`;
    * translation (Appendix E): `warmup_steps=2000`, `constant_steps=8000`.

    Args:
        peak_learning_rate: the rate reached at the end of the warm-up (> 0).
        warmup_steps: steps of linear increase (>= 1).
        constant_steps: steps held at the peak after the warm-up (>= 0).

    Example:

    >>> schedule = WarmupInverseSquareRoot(1e-3, warmup_steps=1000)
    >>> round(float(schedule(3999)), 6)  # step 4000: sqrt(1000 / 4000)
    0.0005
    """

    def __init__(self, peak_learning_rate, warmup_steps=1000, constant_steps=0,
                 name="warmup_inverse_square_root"):
        self.peak_learning_rate = _validation.check_positive_float(
            "peak_learning_rate", peak_learning_rate)
        self.warmup_steps = _validation.check_positive_int(
            "warmup_steps", warmup_steps)
        if (isinstance(constant_steps, bool) or not isinstance(constant_steps, int)
                or constant_steps < 0):
            raise ValueError("`constant_steps` must be a non-negative integer, "
                             f"received constant_steps={constant_steps!r}.")
        self.constant_steps = constant_steps
        self.name = name

    def __call__(self, step):
        # Keras passes the number of completed iterations: step s is that + 1.
        step = ops.cast(step, "float32") + 1.0
        warmup = float(self.warmup_steps)
        hold_end = float(self.warmup_steps + self.constant_steps)
        decayed = ops.sqrt(hold_end / ops.maximum(step, hold_end))
        ramp = ops.minimum(step / warmup, 1.0)
        return self.peak_learning_rate * ramp * decayed

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "constant_steps": self.constant_steps,
            "name": self.name,
        }
