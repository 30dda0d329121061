"""Test callbacks: a fake clock and a recorder of each training step."""

import keras
import numpy as np
from keras import ops

# Seconds the fake clock advances per training step.
STEP_SECONDS = 0.5


class FakeClock(keras.callbacks.Callback):
    """A clock that advances STEP_SECONDS at the end of each training step.

    Substitute it for `sgmoe.training._logs.monotonic_clock` and put it first
    in the callbacks, so words per second are exact: tokens / (steps * 0.5 s).
    """

    def __init__(self):
        super().__init__()
        self.time = 0.0

    def __call__(self):
        return self.time

    def on_train_batch_end(self, batch, logs=None):
        self.time += STEP_SECONDS


class Recorder(keras.callbacks.Callback):
    """Records, after each training step (counted from 1), the logs, the
    weights, and the statistics variables of the given MoE layers."""

    def __init__(self, moe_layers=()):
        super().__init__()
        self.moe_layers = list(moe_layers)
        self.steps = {}

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # syncs the variables on JAX
        layers = {}
        for layer in self.moe_layers:
            layers[layer.name] = {
                "importance": ops.convert_to_numpy(layer.expert_importance),
                "load": ops.convert_to_numpy(layer.expert_load),
                "dispatched": ops.convert_to_numpy(layer.expert_dispatched),
                "expert_dropped": ops.convert_to_numpy(layer.expert_dropped),
                "dropped": float(ops.convert_to_numpy(layer.dropped_fraction)),
                "aux": {name: float(ops.convert_to_numpy(variable))
                        for name, variable in layer.auxiliary_losses.items()},
            }
        self.steps[len(self.steps) + 1] = {
            "logs": dict(logs),
            "weights": [np.array(w) for w in model.get_weights()],
            "layers": layers,
        }
