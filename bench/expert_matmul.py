"""The experts' gradient products in both layouts, across capacities.

`sgmoe.layers._expert_matmul` computes the gradients of the experts'
batched matmul inputs [E, C, d] @ kernel [E, d, h] feature-major when C is at
most FEATURE_MAJOR_MAX_CAPACITY. For the first expert matmul of the layer
`bench/moe_layer.py` times (its flags: --num_tokens, --model_dim,
--hidden_dim, --k, --capacity_factor, --num_experts, --repeats; C is the
layer's capacity), this prints the compiled time of:

* forward: inputs @ kernel, [E, C, h] out;
* backward, token-major: the input and kernel gradients of `ops.matmul` as
  automatic differentiation lays them out (dy @ kernel^T, inputs^T @ dy);
* backward, feature-major: the same two gradients as `expert_matmul` lays
  them out at small C (kernel @ dy^T and a materialised inputs^T, pinned);
* kernel read once: the streaming floor of one product.

Usage:
    python bench/expert_matmul.py --num_experts=1024,256,128,64,16,8
    KERAS_BACKEND=jax python bench/expert_matmul.py --num_experts=1024,64
    python bench/expert_matmul.py --quick   # moe_layer.py's tiny sizes
"""

import functools
import os
import sys

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

from absl import app  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

# bench/moe_layer.py's flags and timing helpers.
import moe_layer  # noqa: E402
from sgmoe.layers import _expert_matmul  # noqa: E402
from sgmoe.layers import dispatch  # noqa: E402

FLAGS = moe_layer.FLAGS


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


def main(argv):
    del argv
    sizes = moe_layer.flag_sizes()
    capacity_factor = moe_layer.flag_capacity_factor()
    rng = np.random.RandomState(0)
    d, h = sizes["model_dim"], sizes["hidden_dim"]
    header = ["E", "C"] + list(PRODUCTS)
    print(f"backend {keras.backend.backend()}, T = {sizes['num_tokens']}, "
          f"k = {sizes['k']}, capacity factor {capacity_factor:g}, "
          f"d = {d}, h = {h}; milliseconds, median of {sizes['repeats']}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for num_experts in sizes["num_experts"]:
        capacity = dispatch.expert_capacity(
            sizes["num_tokens"], num_experts, sizes["k"], capacity_factor)
        args = [ops.convert_to_tensor(rng.randn(*shape).astype("float32"))
                for shape in [(num_experts, capacity, d),
                              (num_experts, d, h),
                              (num_experts, capacity, h)]]
        cells = [num_experts, capacity]
        for product in PRODUCTS.values():
            run = functools.partial(moe_layer.compile_function(product),
                                    *args)
            cells.append(
                f"{1e3 * moe_layer.time_call(run, sizes['repeats']):.2f}")
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        del args, run  # the next row's buffers need the memory


if __name__ == "__main__":
    app.run(main)
