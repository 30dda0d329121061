"""Runs one FactoredAdam step of a small MoE model on 8 virtual CPU devices.

Run as a separate process (XLA_FLAGS must be set before JAX starts); prints
one JSON line: the sharding specs of the expert kernel and its slots, and the
updated weights of the sharded and the single-device run.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"
from tests.xla_flags import with_devices  # noqa: E402

os.environ["XLA_FLAGS"] = with_devices(8)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sgmoe.layers import MixtureOfExperts  # noqa: E402
from sgmoe.optimizers import FactoredAdam  # noqa: E402


def build_and_step(x, y):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 16))
    hidden = keras.layers.Dense(16)(inputs)
    # Two token groups, as the mesh's two "batch" shards give.
    hidden = hidden + MixtureOfExperts(8, 32, k=2, seed=0, token_groups=2,
                                       router_args={"noisy": False},
                                       name="moe")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    optimizer = FactoredAdam(1e-2)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model, optimizer


def spec(variable):
    return [axis for axis in variable.value.sharding.spec]


def main():
    rng = np.random.RandomState(0)
    x = rng.randn(16, 5, 16).astype("float32")
    y = rng.randn(16, 5, 1).astype("float32")
    single, _ = build_and_step(x, y)

    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*experts/kernel_(in|out)"] = ("model", None, None)
    layout_map[".*experts/bias_(in|out)"] = ("model", None)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch")
    with distribution.scope():
        sharded, optimizer = build_and_step(x, y)

    kernel = sharded.get_layer("moe").experts.kernel_in
    slots = {v.name: spec(v) for v in optimizer.variables
             if "experts_kernel_in" in v.path}
    print(json.dumps({
        "num_devices": len(devices),
        "kernel": spec(kernel),
        "slots": slots,
        "max_weight_difference": max(
            float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(single.get_weights(), sharded.get_weights())),
    }))


if __name__ == "__main__":
    main()
