"""Dropless MoE inference on a few tokens: buffer against blocks.

When a model decodes a few sequences, a MoE layer sees N tokens with
N k < E assignments. The dropless plan used to keep a buffer of at least
one slot per expert, so every call read all E experts' weights; it now
keeps no buffer below one assignment per expert and computes the
assignments in blocks of one expert each, reading only the experts in use
(`sgmoe.layers.dispatch.dropless_capacity`). For each number of experts
and tokens this times one XLA-compiled inference call of
`MixtureOfExperts` (k = 4, d = 512, h = 1024: the paper's experts) both
ways, next to

- **used-experts floor**: the experts in use (u of them, as routed)
  multiplied once each, a batched matmul pair over [u, ceil(N k / u), d],
  which must read u experts' weights;
- **dense, same ops**: one feed-forward layer d -> k h -> d on the N
  tokens, the dense layer with the MoE's ops per token (MoE-1-Wide).

Medians of `--repeats` calls taken round-robin.

    python bench/inference_dispatch.py
    KERAS_BACKEND=jax python bench/inference_dispatch.py
    python bench/inference_dispatch.py --quick
"""

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from _report import header  # noqa: E402
from _report import print_row  # noqa: E402
from _report import rows_table  # noqa: E402
from _report import write_table  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_experts", default="32,256")
    parser.add_argument("--num_tokens", default="1,4,16,63")
    parser.add_argument("--model_dim", type=int, default=512)
    parser.add_argument("--hidden_dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="",
                        help="Also write the table here (markdown).")
    parser.add_argument("--quick", action="store_true",
                        help="Tiny sizes: a smoke run.")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_experts, args.num_tokens = "16", "1,5"
        args.model_dim, args.hidden_dim, args.repeats = 16, 32, 3
    args.num_experts = [int(value) for value in args.num_experts.split(",")]
    args.num_tokens = [int(value) for value in args.num_tokens.split(",")]
    return args


@contextlib.contextmanager
def one_slot_per_expert():
    """The rule before: a buffer of at least one slot per expert, also
    below one assignment per expert (patched in while tracing only)."""
    from sgmoe.layers import dispatch

    rule = dispatch.dropless_capacity

    def before(num_tokens, num_experts, k):
        if isinstance(num_tokens, int):
            mean = num_tokens * k / num_experts
            return max(1, min(num_tokens,
                              math.ceil(mean + 2 * math.sqrt(mean))))
        return rule(num_tokens, num_experts, k)

    dispatch.dropless_capacity = before
    try:
        yield
    finally:
        dispatch.dropless_capacity = rule


def compiled_layer(layer):
    """x -> layer(x, training=False), XLA-compiled."""
    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        # Weights as arguments: closed over, they would be compiled in as
        # constants.
        run = jax.jit(lambda trainable, non_trainable, x: layer.stateless_call(
            trainable, non_trainable, x, training=False)[0])
        return lambda x: run(trainable, non_trainable, x).block_until_ready()
    import tensorflow as tf

    run = tf.function(lambda x: layer(x, training=False), jit_compile=True)
    return lambda x: run(x).numpy()


def compiled(function):
    if keras.backend.backend() == "jax":
        import jax

        run = jax.jit(function)
        return lambda *a: run(*a).block_until_ready()
    import tensorflow as tf

    run = tf.function(function, jit_compile=True)
    return lambda *a: run(*a).numpy()


def feed_forward(x, kernel_in, kernel_out):
    """relu(x W_in) W_out; batched over a leading axis when there is one."""
    return ops.matmul(ops.relu(ops.matmul(x, kernel_in)), kernel_out)


def measure(args, num_experts, num_tokens):
    from sgmoe.layers import MixtureOfExperts

    d, h, k = args.model_dim, args.hidden_dim, args.k
    rng = np.random.RandomState(0)
    moe = MixtureOfExperts(num_experts, h, k=k, seed=0)
    moe.build((None, d))
    moe.router.kernel.assign(rng.randn(d, num_experts).astype("float32"))
    x = ops.convert_to_tensor(rng.randn(num_tokens, d).astype("float32"))
    indices = ops.convert_to_numpy(moe.router(x, training=False)
                                   .expert_indices)
    used = len(np.unique(indices))
    rows = -(-num_tokens * k // used)
    floor_inputs = [ops.convert_to_tensor(value) for value in (
        rng.randn(used, rows, d).astype("float32"),
        ops.convert_to_numpy(moe.experts.kernel_in)[:used],
        ops.convert_to_numpy(moe.experts.kernel_out)[:used])]
    dense_inputs = [x] + [ops.convert_to_tensor(
        0.05 * rng.randn(*shape).astype("float32"))
        for shape in ((d, k * h), (k * h, d))]
    with one_slot_per_expert():
        before = compiled_layer(moe)
        before(x)  # traced and compiled under the old rule
    after = compiled_layer(moe)
    floor = compiled(feed_forward)  # batched over u experts
    dense = compiled(feed_forward)
    calls = {"buffer (before)": lambda: before(x),
             "blocks (now)": lambda: after(x),
             "used-experts floor": lambda: floor(*floor_inputs),
             "dense, same ops": lambda: dense(*dense_inputs)}
    np.testing.assert_allclose(  # the two plans, the same outputs
        np.asarray(before(x)), np.asarray(after(x)), rtol=1e-4, atol=1e-4)
    seconds = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    row = {"experts": num_experts, "tokens": num_tokens,
           "experts in use": used}
    for name, values in seconds.items():
        row[f"{name} ms"] = 1e3 * statistics.median(values)
    row["before / now"] = row["buffer (before) ms"] / row["blocks (now) ms"]
    row["now / floor"] = row["blocks (now) ms"] / row["used-experts floor ms"]
    row["now / dense"] = row["blocks (now) ms"] / row["dense, same ops ms"]
    print_row(row)
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.time()
    rows = [measure(args, num_experts, num_tokens)
            for num_experts in args.num_experts
            for num_tokens in args.num_tokens]
    setting = (f"MixtureOfExperts inference (dropless), k={args.k}, "
               f"d={args.model_dim}, h={args.hidden_dim}, gate N(0, 1), "
               f"XLA-compiled, medians of {args.repeats} round-robin calls.")
    text = (header("inference_dispatch.py", argv, time.time() - start,
                   setting) + "\n\n" + rows_table(rows, list(rows[0]), 0))
    if args.out:
        return write_table(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
