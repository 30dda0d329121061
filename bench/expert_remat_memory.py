"""Activation memory of a MoE stack with and without expert rematerialisation.

Compiles the gradient of a stack of `--num_layers` residual MoE layers
(x <- x + MoE(x)) with `jax.jit` and reads XLA's buffer assignment
(`memory_analysis().temp_size_in_bytes`: everything the step allocates that
is neither an argument nor an output, i.e. the activations kept for the
backward pass and the working buffers). JAX backend only.

    KERAS_BACKEND=jax python bench/expert_remat_memory.py
    KERAS_BACKEND=jax python bench/expert_remat_memory.py --quick
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from sgmoe.layers import MixtureOfExperts  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_tokens", 4096, "Tokens in the macro-batch.")
flags.DEFINE_integer("model_dim", 512, "d.")
flags.DEFINE_integer("hidden_dim", 1024, "h of each expert.")
flags.DEFINE_integer("num_experts", 16, "Experts per layer.")
flags.DEFINE_integer("k", 2, "Experts per token.")
flags.DEFINE_list("num_layers", ["1", "2", "4", "8"], "Stack depths.")
flags.DEFINE_bool("quick", False, "Seconds: T=256, d=64, h=128, 4 experts, "
                  "depths 1 and 2 (overrides those flags).")

MIB = 2**20


def temp_bytes(num_layers, rematerialize):
    import jax

    layers = [MixtureOfExperts(FLAGS.num_experts, FLAGS.hidden_dim, k=FLAGS.k,
                               capacity_factor=1.0, seed=i,
                               rematerialize_experts=rematerialize)
              for i in range(num_layers)]
    for layer in layers:
        layer.build((FLAGS.num_tokens, FLAGS.model_dim))

    def loss(trainable, non_trainable, x):
        for layer, weights, state in zip(layers, trainable, non_trainable):
            outputs, _ = layer.stateless_call(weights, state, x,
                                              training=True)
            x = x + outputs
        return ops.sum(ops.square(x))

    trainable = [[v.value for v in layer.trainable_variables]
                 for layer in layers]
    non_trainable = [[v.value for v in layer.non_trainable_variables]
                     for layer in layers]
    x = keras.random.normal((FLAGS.num_tokens, FLAGS.model_dim), seed=1)
    compiled = jax.jit(jax.grad(loss)).lower(trainable, non_trainable,
                                             x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
    del argv
    if keras.backend.backend() != "jax":
        raise SystemExit("expert_remat_memory.py needs KERAS_BACKEND=jax")
    if FLAGS.quick:
        FLAGS.num_tokens, FLAGS.model_dim, FLAGS.hidden_dim = 256, 64, 128
        FLAGS.num_experts, FLAGS.num_layers = 4, ["1", "2"]
    import jax

    hidden_mib = (FLAGS.num_tokens * FLAGS.k * FLAGS.hidden_dim * 4) / MIB
    print(f"devices: {jax.devices()} | T={FLAGS.num_tokens} "
          f"d={FLAGS.model_dim} h={FLAGS.hidden_dim} E={FLAGS.num_experts} "
          f"k={FLAGS.k}, capacity factor 1 | one layer's expert hidden "
          f"activation [E, C, h]: {hidden_mib:.2f} MiB")
    print("| MoE layers | temp MiB, stored | temp MiB, rematerialised | saved MiB |")
    print("|---:|---:|---:|---:|")
    for num_layers in (int(n) for n in FLAGS.num_layers):
        stored = temp_bytes(num_layers, False) / MIB
        remat = temp_bytes(num_layers, True) / MIB
        print(f"| {num_layers} | {stored:.2f} | {remat:.2f} | "
              f"{stored - remat:.2f} |")


if __name__ == "__main__":
    app.run(main)
