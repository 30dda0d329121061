"""The experts' gradient products in both layouts, across capacities.

`sgmoe.layers._expert_matmul` computes the gradients of the experts'
batched matmul inputs [E, C, a] @ kernel [E, a, b] feature-major when C is at
most FEATURE_MAJOR_MAX_CAPACITY. This prints, for E * C = --slots fixed (the
same FLOPs in every row), the compiled time of:

* forward: inputs @ kernel, [E, C, b] out;
* backward, token-major: the input and kernel gradients of `ops.matmul` as
  automatic differentiation lays them out (dy @ kernel^T, inputs^T @ dy);
* backward, feature-major: the same two gradients as `expert_matmul` lays
  them out at small C (kernel @ dy^T and a materialised inputs^T, pinned);
* kernel read once: the streaming floor of one product.

Usage:
    python bench/expert_matmul.py
    KERAS_BACKEND=jax python bench/expert_matmul.py --num_experts=1024,64
"""

import statistics
import time

from absl import app
from absl import flags
import keras
import numpy as np
from keras import ops

from sgmoe.layers import _expert_matmul

FLAGS = flags.FLAGS
flags.DEFINE_integer("slots", 8192, "E * C, the same in every row.")
flags.DEFINE_integer("input_dim", 512, "a.")
flags.DEFINE_integer("output_dim", 1024, "b.")
flags.DEFINE_list("num_experts", ["1024", "256", "128", "64", "16", "8"],
                  "E of each row; C = slots / E.")
flags.DEFINE_integer("repeats", 5, "Timed calls (median) after a warm-up.")


def compile_function(function):
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, jit_compile=True)


def block(value):
    if keras.backend.backend() == "jax":
        value.block_until_ready()
    return value


def gradients(matmul):
    """(inputs, kernel, upstream) -> the VJP of `matmul` at upstream."""
    def loss(inputs, kernel, upstream):
        return ops.sum(upstream * matmul(inputs, kernel))

    if keras.backend.backend() == "jax":
        import jax

        return jax.grad(loss, argnums=(0, 1))
    import tensorflow as tf

    def vjp(inputs, kernel, upstream):
        with tf.GradientTape() as tape:
            tape.watch((inputs, kernel))
            value = loss(inputs, kernel, upstream)
        return tuple(tape.gradient(value, (inputs, kernel)))

    return vjp


PRODUCTS = {
    "forward": lambda inputs, kernel, upstream: ops.matmul(inputs, kernel),
    "backward, token-major (automatic differentiation)":
        gradients(ops.matmul),
    "backward, feature-major (pinned)":
        gradients(_expert_matmul._feature_major_gradient_matmul),
    "kernel read once":
        lambda inputs, kernel, upstream: ops.sum(kernel, axis=(1, 2)),
}


def median_ms(function, args, repeats):
    block_all = lambda values: [block(v) for v in
                                (values if isinstance(values, tuple)
                                 else (values,))]
    block_all(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block_all(function(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv):
    del argv
    rng = np.random.RandomState(0)
    a, b = FLAGS.input_dim, FLAGS.output_dim
    header = ["E", "C"] + list(PRODUCTS)
    print(f"backend {keras.backend.backend()}, E * C = {FLAGS.slots}, "
          f"a = {a}, b = {b}; milliseconds, median of {FLAGS.repeats}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for num_experts in [int(e) for e in FLAGS.num_experts]:
        capacity = FLAGS.slots // num_experts
        args = [ops.convert_to_tensor(rng.randn(*shape).astype("float32"))
                for shape in [(num_experts, capacity, a),
                              (num_experts, a, b),
                              (num_experts, capacity, b)]]
        cells = [num_experts, capacity]
        for product in PRODUCTS.values():
            cells.append(f"{median_ms(compile_function(product), args, FLAGS.repeats):.1f}")
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        del args


if __name__ == "__main__":
    app.run(main)
