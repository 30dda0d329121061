"""Data parallelism on TensorFlow: `distribution_for_mesh("batch:2")`.

Run as a separate process by test_mesh_sharding.py: the CPU is split into two
logical devices before TensorFlow starts, so the MirroredStrategy has two
replicas. Prints one JSON line: the strategy, and the loss and weights after
one SGD step of a small MoE model with the strategy and on one device. The
MoE keeps every assignment (capacity for all tokens) and has no balancing
losses, so each replica's half batch gives the same outputs as the whole
batch and the two runs must agree.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", ".."))

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

import contextlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sgmoe.distribute import distribution_for_mesh  # noqa: E402
from sgmoe.layers import MixtureOfExperts  # noqa: E402


def trained(strategy, x, y):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        inputs = keras.Input((5, 16))
        hidden = keras.layers.Dense(16)(inputs)
        hidden = hidden + MixtureOfExperts(
            4, 32, k=2, capacity_factor=2.0, seed=0, name="moe",
            router_args={"noisy": False, "importance_weight": 0.0,
                         "load_weight": 0.0})(hidden)
        model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        initial = [np.array(w) for w in model.trainable_weights]
        loss = model.fit(x, y, batch_size=8, epochs=1, shuffle=False,
                         verbose=0).history["loss"][0]
    # Trainable weights: the MoE statistics (expert load) are per replica.
    return loss, initial, [np.array(w) for w in model.trainable_weights]


def main():
    strategy = distribution_for_mesh("batch:2")
    rng = np.random.RandomState(0)
    x = rng.randn(8, 5, 16).astype("float32")
    y = rng.randn(8, 5, 1).astype("float32")
    single_loss, initial, single = trained(None, x, y)
    mirrored_loss, _, mirrored = trained(strategy, x, y)
    print(json.dumps({
        "strategy": type(strategy).__name__,
        "num_replicas": strategy.num_replicas_in_sync,
        "losses": [single_loss, mirrored_loss],
        "max_difference": max(float(np.abs(a - b).max())
                              for a, b in zip(single, mirrored)),
        "min_moved": min(float(np.abs(a - b).max())
                         for a, b in zip(mirrored, initial)),
    }))


if __name__ == "__main__":
    main()
