"""Training-step time of `MixtureOfExperts` against compute and memory floors.

For each number of experts E, times one compiled forward+backward pass of
`MixtureOfExperts` (training=True: gating noise and balancing losses on;
gradients with respect to every trainable weight and the input) and compares
it with two floors measured in the same run, on the same weights:

* compute floor: a dense GEMM pair x[R, d] @ W1[d, h] -> relu -> @ W2[h, d],
  forward+backward, with R = E * capacity rows (capacity_factor * T * k up to
  rounding), i.e. the same active expert FLOPs as the MoE;
* memory floor: streaming the layer's weights the way a training step must:
  each weight is read twice and a gradient-sized buffer is written once
  (3 x weight bytes); reported in ms and in effective GB/s.

The ratio is MoE time over the larger floor; the target is 1.5x at every size.
For comparison it also times what keras-hub's MoE blocks do: every expert on
every token (einsums 'td,edh->eth' and 'eth,ehd->etd') weighted by a dense
top-k-masked softmax gate [T, E], skipped when its [E, T, h] float32
activations exceed --dense_limit_gb.

Every timed function is compiled (TensorFlow: `tf.function(jit_compile=True)`
with `tf.GradientTape`; JAX: `jax.jit` of `jax.value_and_grad`, through
`stateless_call` for the layer). Times are medians of --repeats calls after
one warm-up call (which includes compilation); the MoE and its two floors
are timed round-robin, so that load from other processes falls on all three
alike and the ratio stays meaningful on a shared machine.

Usage:
    python bench/moe_layer.py                  # T=4096, d=512, h=1024, k=2
    python bench/moe_layer.py --num_experts=8,64 --repeats=3
    python bench/moe_layer.py --quick          # tiny sizes, a smoke run
    KERAS_BACKEND=jax python bench/moe_layer.py
"""

import gc
import math
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import keras
from keras import ops

from sgmoe.layers import ExpertChoiceRouter
from sgmoe.layers import GShardRouter
from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import StrictlyBalancedRouter
from sgmoe.layers import SwitchRouter
from sgmoe.layers import dispatch

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_tokens", 4096, "T, tokens in the macro-batch.")
flags.DEFINE_integer("model_dim", 512, "d, input and output dimension.")
flags.DEFINE_integer("hidden_dim", 1024, "h, hidden units of each expert.")
flags.DEFINE_integer("k", 2, "Experts per token.")
flags.DEFINE_list("num_experts", ["8", "64", "256", "1024"],
                  "Numbers of experts E, one table row each.")
flags.DEFINE_float(
    "capacity_factor", None,
    "Capacity factor of the MoE (default 1.0, and 1.25 with --dropless); "
    "the compute floor gets the same number of rows (E * capacity), so both "
    "do the same expert FLOPs.")
flags.DEFINE_integer("repeats", 5,
                     "Timed calls per measurement (median), after a warm-up.")
flags.DEFINE_float(
    "dense_limit_gb", 4.0,
    "Skip the every-expert-on-every-token baseline when its [E, T, h] "
    "float32 activations exceed this many GB (1e9 bytes).")
flags.DEFINE_enum(
    "router", "noisy_top_k",
    ["noisy_top_k", "switch", "gshard", "expert_choice", "strictly_balanced",
     "hierarchical"],
    "noisy_top_k: the paper's gate with --k; switch: SwitchRouter (k=1, "
    "jitter 0.01, z-loss 1e-3); gshard: GShardRouter (k=2, one group, random "
    "second expert); expert_choice: ExpertChoiceRouter with capacity factor "
    "c = --k (each token gets --k experts on average); strictly_balanced: "
    "StrictlyBalancedRouter with --k; hierarchical: "
    "HierarchicalMixtureOfExperts with G = 2**floor(log2(E) / 2) groups of "
    "E / G experts, k = 2 at each level.")
flags.DEFINE_bool(
    "dropless", False,
    "Instead of the table above, dropless dispatch against capacity "
    "dispatch at --capacity_factor (1.25 unless given), same weights and "
    "routing (noisy_top_k router): training step and inference forward of "
    "each, the dropless step against the compute floor of the T * k rows "
    "it really needs, and (JAX) XLA's temporary memory of both steps.")
flags.DEFINE_integer(
    "block_size", None,
    "Most rows per overflow block with --dropless; default: the buffer's "
    "capacity per expert.")
flags.DEFINE_bool(
    "quick", False,
    "Smoke run in seconds: T=256, d=64, h=128, experts 4,16, 2 repeats "
    "(overrides those flags).")

# Scale of the sum-of-squares output loss; small so the balancing losses
# are not negligible next to it (their gradients are part of the step).
OUTPUT_LOSS_SCALE = 1e-3
BYTES_PER_GB = 1e9
TARGET_RATIO = 1.5


def backend_name():
    return keras.backend.backend()


def machine_description():
    """One line: CPU, cores, Keras backend and versions, devices."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    processor = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    backend = backend_name()
    if backend == "jax":
        import jax
        devices = ", ".join(str(device) for device in jax.devices())
        version = f"jax {jax.__version__}"
    elif backend == "tensorflow":
        import tensorflow as tf
        devices = ", ".join(
            device.name for device in tf.config.list_logical_devices())
        version = f"tensorflow {tf.__version__}"
    else:
        raise ValueError(
            f"bench/moe_layer.py supports the tensorflow and jax backends, "
            f"received KERAS_BACKEND={backend!r}.")
    return (f"{processor} | {os.cpu_count()} cores | keras "
            f"{keras.__version__} ({backend}, {version}) | devices: {devices}")


# Backend-specific compilation and synchronisation. Everything else is
# keras.ops.


def block(outputs):
    """Waits until every tensor in `outputs` is computed."""
    if backend_name() == "jax":
        import jax
        jax.block_until_ready(outputs)
    else:
        # TensorFlow runs a compiled function synchronously on the host and
        # its outputs come from one XLA executable; fetching one value is
        # enough to be sure.
        keras.tree.flatten(outputs)[0].numpy()


def compile_function(function):
    """Compiles `function(*args)` with XLA."""
    if backend_name() == "jax":
        import jax
        return jax.jit(function)
    import tensorflow as tf
    return tf.function(function, jit_compile=True)


def compile_value_and_grad(loss_fn):
    """Compiles weights, x -> (loss, (weight gradients, input gradient)).

    `loss_fn(weights, x)` is a keras.ops function of a list of weights
    (tensors or variables) and an input tensor.
    """
    if backend_name() == "jax":
        import jax
        return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(weights, inputs):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            tape.watch(inputs)
            loss = loss_fn(weights, inputs)
        return loss, tape.gradient(loss, (weights, inputs))

    return step


def layer_train_step(layer, inputs):
    """Returns a no-argument callable running one compiled training step.

    The step is the layer's forward pass with training=True, the loss
    `OUTPUT_LOSS_SCALE * sum(outputs**2) + sum(auxiliary losses)`, and its
    gradients with respect to every trainable weight and the input.
    """
    if backend_name() == "jax":
        import jax

        def loss_fn(trainable, non_trainable, x):
            outputs, non_trainable, losses = layer.stateless_call(
                trainable, non_trainable, x, training=True,
                return_losses=True)
            return output_loss(outputs) + sum(losses, 0.0), non_trainable

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True)

        @jax.jit
        def step(trainable, non_trainable, x):
            (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x)
            return loss, grads, non_trainable

        trainable = [v.value for v in layer.trainable_variables]
        state = {"non_trainable":
                 [v.value for v in layer.non_trainable_variables]}

        def run():
            # Carries the seed state forward so each call draws fresh noise.
            loss, grads, state["non_trainable"] = step(
                trainable, state["non_trainable"], inputs)
            return loss, grads

        return run

    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True)
            loss = output_loss(outputs) + sum(layer.losses, 0.0)
        return loss, tape.gradient(loss, (layer.trainable_variables, x))

    return lambda: step(inputs)


def layer_inference(layer, inputs):
    """A no-argument callable running the compiled forward pass,
    training=False."""
    if backend_name() == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, x):
            return layer.stateless_call(trainable, non_trainable, x,
                                        training=False)[0]

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        return lambda: forward(trainable, non_trainable, inputs)
    forward = compile_function(lambda x: layer(x, training=False))
    return lambda: forward(inputs)


def train_step_temp_mib(layer, inputs):
    """XLA's temporary memory of the layer's training step (JAX), MiB."""
    if backend_name() != "jax":
        return None
    import jax

    def loss_fn(trainable, non_trainable, x):
        outputs, _, losses = layer.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True)
        return output_loss(outputs) + sum(losses, 0.0)

    compiled = jax.jit(jax.grad(loss_fn, argnums=(0, 2))).lower(
        [v.value for v in layer.trainable_variables],
        [v.value for v in layer.non_trainable_variables], inputs).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def time_calls(runs, repeats):
    """Median seconds of each no-argument callable in `runs` (a dict).

    Each is called once to compile and warm up; then the timed calls go
    round-robin, one call of each per round, so that load from other
    processes on the machine falls on all of them alike.
    """
    for run in runs.values():
        block(run())  # compiles
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs = run()
            block(outputs)
            times[name].append(time.perf_counter() - start)
            del outputs  # frees gradient buffers before the next call
    return {name: statistics.median(values) for name, values in times.items()}


def time_call(run, repeats):
    """Median seconds of `run()` over `repeats` calls after one warm-up."""
    return time_calls({"run": run}, repeats)["run"]


# The timed computations.


def output_loss(outputs):
    return OUTPUT_LOSS_SCALE * ops.sum(ops.square(outputs))


def dense_pair_loss(weights, x):
    """Compute floor: x [R, d] @ W1 [d, h] -> relu -> @ W2 [h, d]."""
    kernel_in, kernel_out = weights
    return output_loss(ops.matmul(ops.relu(ops.matmul(x, kernel_in)),
                                  kernel_out))


def stream_weights(weights):
    """Memory floor: reads each weight twice, writes one weight-sized output.

    The second read scales by a function of the first read's sum, so it
    cannot start before the first read has finished (no fusion into one
    pass), and the scaled copy is returned, so it must be written.
    """
    copies = []
    total = ops.zeros((), dtype="float32")
    for weight in weights:
        weight_sum = ops.sum(ops.sum(weight, axis=-1))
        copies.append(weight * (1.0 / (1.0 + ops.abs(weight_sum))))
        total = total + weight_sum
    return total, copies


def every_expert_loss_fn(k):
    """keras-hub style MoE: every expert on every token, dense gate [T, E]."""

    def loss_fn(weights, x):
        w_gate, kernel_in, bias_in, kernel_out, bias_out = weights
        num_experts = kernel_in.shape[0]
        logits = ops.matmul(x, w_gate)  # [T, E]
        _, top_indices = ops.top_k(logits, k)
        in_top_k = ops.sum(ops.one_hot(top_indices, num_experts), axis=1) > 0
        gates = ops.softmax(
            ops.where(in_top_k, logits, ops.full_like(logits, -1e9)), axis=-1)
        hidden = ops.relu(ops.einsum("td,edh->eth", x, kernel_in)
                          + ops.expand_dims(bias_in, 1))  # [E, T, h]
        outputs = (ops.einsum("eth,ehd->etd", hidden, kernel_out)
                   + ops.expand_dims(bias_out, 1))  # [E, T, d]
        return output_loss(ops.einsum("te,etd->td", gates, outputs))

    return loss_fn


def floor_runs(layer, rows, model_dim, hidden_dim, seed):
    """The two floors as no-argument callables: "compute_floor", a dense
    GEMM pair on `rows` rows, and "memory_floor", streaming the layer's
    weights as a training step must."""
    dense_weights = [
        keras.random.normal((model_dim, hidden_dim), seed=seed)
        / math.sqrt(model_dim),
        keras.random.normal((hidden_dim, model_dim), seed=seed)
        / math.sqrt(hidden_dim),
    ]
    dense_inputs = keras.random.normal((rows, model_dim), seed=seed)
    dense_step = compile_value_and_grad(dense_pair_loss)
    streamed = backend_values(layer.trainable_variables)
    stream = compile_function(stream_weights)
    return {
        "compute_floor": lambda: dense_step(dense_weights, dense_inputs),
        "memory_floor": lambda: stream(streamed),
    }


def weight_bytes(variables):
    return sum(math.prod(v.shape) * 4 for v in variables)


def backend_values(variables):
    """The backend variables or arrays behind Keras variables (no copies)."""
    return [v.value for v in variables]


def build_layer(num_experts, config):
    """The benchmarked layer, the rows of its compute floor, and k.

    The compute floor gets the rows the layer's experts compute: with
    capacity, E * capacity (about capacity_factor * T * k).
    """
    num_tokens, hidden_dim, k = (config["num_tokens"], config["hidden_dim"],
                                 config["k"])
    capacity_factor = config["capacity_factor"]
    name = config["router"]
    if name == "hierarchical":
        groups = 2 ** int(math.log2(num_experts) // 2)
        per_group = num_experts // groups
        layer = HierarchicalMixtureOfExperts(
            groups, per_group, 2, 2, expert_hidden_dim=hidden_dim,
            capacity_factor=capacity_factor, seed=0)
        first = dispatch.expert_capacity(num_tokens, groups, 2,
                                         capacity_factor)
        second = min(first, dispatch.expert_capacity(
            num_tokens * 2, num_experts, 2, capacity_factor))
        return layer, num_experts * second, 4
    routers = {
        "noisy_top_k": lambda: "noisy_top_k",
        "switch": lambda: SwitchRouter(num_experts, z_loss_weight=1e-3,
                                       jitter=0.01, seed=0),
        "gshard": lambda: GShardRouter(num_experts, seed=0),
        "expert_choice": lambda: ExpertChoiceRouter(
            num_experts, capacity_factor=k, seed=0),
        "strictly_balanced": lambda: StrictlyBalancedRouter(
            num_experts, k=k, seed=0),
    }
    router = routers[name]()
    layer = MixtureOfExperts(
        num_experts=num_experts, expert_hidden_dim=hidden_dim,
        k=k if name == "noisy_top_k" else None,
        capacity_factor=capacity_factor, seed=0, router=router)
    if name in ("expert_choice", "strictly_balanced"):
        # Each expert fills ceil(k * T / E) slots.
        slots = min(num_tokens, math.ceil(k * num_tokens / num_experts))
        return layer, num_experts * slots, k
    k = layer.k
    capacity = dispatch.expert_capacity(num_tokens, num_experts, k,
                                        capacity_factor)
    return layer, num_experts * capacity, k


def gate_kernel(layer, model_dim, num_experts):
    """The router's [d, E] gate kernel (None for the hierarchical MoE)."""
    router = getattr(layer, "router", None)
    for weight in [] if router is None else router.trainable_weights:
        if tuple(weight.shape) == (model_dim, num_experts):
            return weight
    return None


def benchmark_experts(num_experts, config):
    """Times one table row; returns a dict of the row's values."""
    num_tokens, model_dim, hidden_dim = (
        config["num_tokens"], config["model_dim"], config["hidden_dim"])
    repeats = config["repeats"]
    seed = keras.random.SeedGenerator(1234)
    inputs = keras.random.normal((num_tokens, model_dim), seed=seed)

    layer, rows, active_per_token = build_layer(num_experts, config)
    layer.build((num_tokens, model_dim))
    seconds = time_calls({
        "moe": layer_train_step(layer, inputs),
        **floor_runs(layer, rows, model_dim, hidden_dim, seed),
    }, repeats)
    streamed_bytes = 3 * weight_bytes(layer.trainable_variables)

    activation_gb = num_experts * num_tokens * hidden_dim * 4 / BYTES_PER_GB
    gate = gate_kernel(layer, model_dim, num_experts)
    if activation_gb > config["dense_limit_gb"] or gate is None:
        every_expert_seconds = None
    else:
        every_expert_weights = backend_values([
            gate, layer.experts.kernel_in,
            layer.experts.bias_in, layer.experts.kernel_out,
            layer.experts.bias_out])
        every_expert_step = compile_value_and_grad(
            every_expert_loss_fn(active_per_token))
        every_expert_seconds = time_call(
            lambda: every_expert_step(every_expert_weights, inputs), repeats)
        del every_expert_weights, every_expert_step

    del layer
    gc.collect()
    return {
        "num_experts": num_experts,
        "tokens_per_expert": num_tokens * active_per_token / num_experts,
        "moe": seconds["moe"],
        "compute_floor": seconds["compute_floor"],
        "memory_floor": seconds["memory_floor"],
        "memory_gb_per_s": (streamed_bytes / BYTES_PER_GB
                            / seconds["memory_floor"]),
        "ratio": seconds["moe"] / max(seconds["compute_floor"],
                                      seconds["memory_floor"]),
        "every_expert": every_expert_seconds,
        "every_expert_gb": None if gate is None else activation_gb,
    }


def benchmark_dropless(num_experts, config):
    """One row of the dropless table: capacity and dropless dispatch of the
    same layer (same weights, same noise draws, so the same routing)."""
    num_tokens, model_dim, hidden_dim, k = (
        config["num_tokens"], config["model_dim"], config["hidden_dim"],
        config["k"])
    capacity_factor = config["capacity_factor"]
    seed = keras.random.SeedGenerator(1234)
    inputs = keras.random.normal((num_tokens, model_dim), seed=seed)
    layers = {}
    for name, arguments in (
            ("capacity", {"eval_capacity_factor": capacity_factor}),
            ("dropless", {"dropless": True,
                          "block_size": config["block_size"]})):
        layer = MixtureOfExperts(num_experts, hidden_dim, k=k,
                                 capacity_factor=capacity_factor, seed=0,
                                 **arguments)
        layer.build((num_tokens, model_dim))
        layers[name] = layer
    # A gate with N(0, 1) logits, so that the clean routing of inference
    # is as uneven as a balanced trained router's rather than the zero
    # gate's (every token to experts 0 and 1).
    layers["capacity"].router.kernel.assign(
        keras.random.normal((model_dim, num_experts), seed=seed)
        / math.sqrt(model_dim))
    for source, target in zip(layers["capacity"].weights,
                              layers["dropless"].weights):
        target.assign(source)
    rows = num_tokens * k
    seconds = time_calls({
        "capacity": layer_train_step(layers["capacity"], inputs),
        "dropless": layer_train_step(layers["dropless"], inputs),
        **floor_runs(layers["dropless"], rows, model_dim, hidden_dim, seed),
        "capacity_inference": layer_inference(layers["capacity"], inputs),
        "dropless_inference": layer_inference(layers["dropless"], inputs),
    }, config["repeats"])
    # The routing of the last timed training call, as the layers recorded it
    # (JAX steps keep their state outside the layer: run one eagerly).
    layers["capacity"](inputs, training=False)
    inference_dropped = float(layers["capacity"].dropped_fraction)
    for layer in layers.values():
        layer(inputs, training=True)
    memory = {name: train_step_temp_mib(layer, inputs)
              for name, layer in layers.items()}
    load = ops.convert_to_numpy(layers["dropless"].expert_load)
    row = {
        "num_experts": num_experts,
        "capacity": dispatch.expert_capacity(num_tokens, num_experts, k,
                                             capacity_factor),
        "dropless_capacity": dispatch.dropless_capacity(num_tokens,
                                                        num_experts, k),
        "capacity_dropped": float(layers["capacity"].dropped_fraction),
        "inference_dropped": inference_dropped,
        "max_load": float(load.max()) / (rows / num_experts),
        "memory": memory,
        **{f"{name}_ms": value * 1e3 for name, value in seconds.items()},
    }
    del layers
    gc.collect()
    return row


DROPLESS_HEADERS = (
    "experts", "C (capacity)", "C (dropless buffer)",
    "training capacity drops",
    "capacity ms", "dropless ms", "dropless / capacity", "T*k floor ms",
    "dropless / floor", "memory floor ms", "dropless / larger floor",
    "inference capacity drops", "inference capacity ms",
    "inference dropless ms",
    "inference dropless / capacity", "temp MiB capacity / dropless")


def format_dropless_row(row):
    """The table's cells; a ratio over its target (1.25x, 1.5x for the
    floor) is marked."""
    def ratio(value, target):
        return f"{value:.2f}x" + (" (over)" if value > target else "")

    memory = row["memory"]
    memory_cell = ("n/a" if memory["capacity"] is None else
                   f"{memory['capacity']:.0f} / {memory['dropless']:.0f}")
    return (
        str(row["num_experts"]), str(row["capacity"]),
        str(row["dropless_capacity"]), f"{row['capacity_dropped']:.1%}",
        f"{row['capacity_ms']:.1f}",
        f"{row['dropless_ms']:.1f}",
        ratio(row["dropless_ms"] / row["capacity_ms"], 1.25),
        f"{row['compute_floor_ms']:.1f}",
        ratio(row["dropless_ms"] / row["compute_floor_ms"], 1.5),
        f"{row['memory_floor_ms']:.1f}",
        ratio(row["dropless_ms"] / max(row["compute_floor_ms"],
                                       row["memory_floor_ms"]), 1.5),
        f"{row['inference_dropped']:.1%}",
        f"{row['capacity_inference_ms']:.1f}",
        f"{row['dropless_inference_ms']:.1f}",
        ratio(row["dropless_inference_ms"] / row["capacity_inference_ms"],
              1.25),
        memory_cell)


# Table.

HEADERS = ("experts", "tokens/expert", "MoE ms", "compute floor ms",
           "memory floor ms", "memory GB/s", "ratio to larger floor",
           "every-expert ms")


def format_row(row):
    if row["every_expert_gb"] is None:
        every_expert = "n/a"
    elif row["every_expert"] is None:
        every_expert = f"skipped ({row['every_expert_gb']:.1f} GB)"
    else:
        every_expert = f"{row['every_expert'] * 1e3:.1f}"
    ratio = f"{row['ratio']:.2f}x"
    if row["ratio"] > TARGET_RATIO:
        ratio += " (over)"
    return (
        str(row["num_experts"]),
        f"{row['tokens_per_expert']:g}",
        f"{row['moe'] * 1e3:.1f}",
        f"{row['compute_floor'] * 1e3:.1f}",
        f"{row['memory_floor'] * 1e3:.1f}",
        f"{row['memory_gb_per_s']:.1f}",
        ratio,
        every_expert,
    )


WIDTHS = (7, 13, 9, 16, 15, 11, 21, 22)


def text_line(cells):
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, WIDTHS))


def markdown_table(rows):
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---:" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    return "\n".join(lines)


def flag_sizes():
    """{num_tokens, model_dim, hidden_dim, k, num_experts (ints), repeats}
    from the flags, with --quick's tiny sizes over them: the sizes this
    script shares with moe_profile.py and expert_matmul.py."""
    sizes = {"num_tokens": FLAGS.num_tokens, "model_dim": FLAGS.model_dim,
             "hidden_dim": FLAGS.hidden_dim, "k": FLAGS.k,
             "num_experts": [int(e) for e in FLAGS.num_experts],
             "repeats": FLAGS.repeats}
    if FLAGS.quick:
        sizes.update(num_tokens=256, model_dim=64, hidden_dim=128,
                     num_experts=[4, 16], repeats=2)
    return sizes


def flag_capacity_factor():
    """--capacity_factor, or its default: 1.25 with --dropless, else 1."""
    if FLAGS.capacity_factor is not None:
        return FLAGS.capacity_factor
    return 1.25 if FLAGS.dropless else 1.0


def main(argv):
    del argv
    config = flag_sizes()
    config["router"] = FLAGS.router
    config["dropless"] = FLAGS.dropless
    config["block_size"] = FLAGS.block_size
    config["k"] = {"switch": SwitchRouter.k, "gshard": GShardRouter.k,
                   "hierarchical": 4}.get(FLAGS.router, config["k"])
    config["capacity_factor"] = flag_capacity_factor()
    config["dense_limit_gb"] = FLAGS.dense_limit_gb
    if config["repeats"] < 1:
        raise ValueError(
            f"--repeats must be at least 1, received {config['repeats']}.")

    print(machine_description())
    if config["dropless"]:
        dropless_table(config)
        return
    print(f"MixtureOfExperts ({config['router']} router, capacity) "
          f"forward+backward, "
          f"training=True: "
          f"T={config['num_tokens']} tokens, d={config['model_dim']}, "
          f"h={config['hidden_dim']}, k={config['k']}, capacity_factor="
          f"{config['capacity_factor']:g}, float32; median of "
          f"{config['repeats']} after a warm-up.")
    print("compute floor: dense GEMM pair with the same expert FLOPs; memory "
          "floor: weights read twice + written once; ratio: MoE / larger "
          f"floor (target <= {TARGET_RATIO}x).")
    print()
    print(text_line(HEADERS), flush=True)
    rows = []
    for num_experts in config["num_experts"]:
        row = benchmark_experts(num_experts, config)
        rows.append(row)
        print(text_line(format_row(row)), flush=True)

    missed = [str(row["num_experts"]) for row in rows
              if row["ratio"] > TARGET_RATIO]
    print()
    if missed:
        print(f"Target {TARGET_RATIO}x of the larger floor missed at "
              f"{', '.join(missed)} experts.")
    else:
        print(f"Target {TARGET_RATIO}x of the larger floor met at every size.")
    print()
    print(markdown_table(rows))


def dropless_table(config):
    print(f"MixtureOfExperts (noisy_top_k), dropless against capacity "
          f"dispatch (capacity_factor={config['capacity_factor']:g}; "
          f"inference with eval_capacity_factor="
          f"{config['capacity_factor']:g}), same weights and routing: "
          f"T={config['num_tokens']} tokens, d={config['model_dim']}, "
          f"h={config['hidden_dim']}, k={config['k']}, float32; median of "
          f"{config['repeats']} after a warm-up. Training steps are "
          "forward+backward; T*k floor: dense GEMM pair on T*k rows; memory "
          "floor: the weights read twice and written once. Targets: "
          "dropless / capacity <= 1.25x (training and inference), "
          "dropless / floor <= 1.5x.")
    print()
    lines = ["| " + " | ".join(DROPLESS_HEADERS) + " |",
             "|" + "|".join("---:" for _ in DROPLESS_HEADERS) + "|"]
    print(lines[0], flush=True)
    print(lines[1], flush=True)
    for num_experts in config["num_experts"]:
        line = "| " + " | ".join(format_dropless_row(
            benchmark_dropless(num_experts, config))) + " |"
        lines.append(line)
        print(line, flush=True)


if __name__ == "__main__":
    app.run(main)
