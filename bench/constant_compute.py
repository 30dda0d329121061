"""Constant compute as capacity grows (Shazeer et al. 2017, the paper's claim).

Issue 8, claim 3: the time per token of the MoE layer and of a full training
step should stay flat within a small factor as the number of experts E grows
from 4 to 4096 at fixed k (expert parameters grow 1024x), unlike a dense
layer with the same parameters and unlike every-expert-on-every-token MoE
blocks (keras-hub's).

For each E it times, per token of a fixed batch of T tokens:

* MoE layer: one compiled forward+backward pass of `MixtureOfExperts`
  (noisy top-k gate, k=4, training=True: gating noise and balancing losses
  on; gradients for every weight and the input), through
  `bench/moe_layer.py`'s `layer_train_step`;
* train step: `train_on_batch` of `MoELanguageModel` (the "tiny_moe" preset
  widened to d, h and E experts; embedding -> LSTM -> MoE -> LSTM ->
  softmax, Adam, `jit_compile=True`; False with --quick) on B x L = T
  tokens;
* dense: a feed-forward layer d -> E*h ReLU -> d with biases, as many
  parameters as the E experts, forward+backward; skipped above
  --dense_limit_gb;
* every-expert: all E experts on all T tokens weighted by a dense top-k
  softmax gate [T, E] (`bench/moe_layer.py`'s `every_expert_loss_fn`, on
  the MoE layer's own weights), forward+backward; skipped above
  --dense_limit_gb.

To show where the time goes as E grows it also times the MoE layer's router
alone (the gate's two [T, d] x [d, E] matmuls, softmax over top-k, the
load estimate over [T, E], forward+backward), the expert-weight streaming
floor (the expert weights read twice and written once, as their gradients
must be; `bench/moe_layer.py`'s `stream_weights`), and the language
model's Adam update alone (compiled, on constant gradients). It also times
the paper's hierarchical MoE (`HierarchicalMixtureOfExperts`, the same
experts in G = 2**floor(log2(E)/2) groups, 2 groups then 2 experts per
token), the gate the paper used for its largest models.

Times are medians of --repeats calls after one warm-up (compilation); the
series of one E are timed round-robin, so load from other processes falls
on all of them alike. The table goes to OUT_DIR/constant_compute.md and a
log-log plot of time per token against expert parameters to
OUT_DIR/constant_compute.png.

Usage:
    python bench/constant_compute.py            # E = 4 ... 4096, T=2048, d=64, h=128
    python bench/constant_compute.py --quick    # tiny sizes, a smoke run
    KERAS_BACKEND=jax python bench/constant_compute.py --out_dir=/tmp/cc
"""

import argparse
import datetime
import gc
import math
import os
import statistics
import sys
import time

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

# bench/moe_layer.py's timing helpers. Importing it defines its absl flags
# (num_experts, k, model_dim, ...) in the process; nothing here parses them.
import moe_layer  # noqa: E402
from sgmoe.layers import HierarchicalMixtureOfExperts  # noqa: E402
from sgmoe.layers import MixtureOfExperts  # noqa: E402
from sgmoe.layers import dispatch  # noqa: E402
from sgmoe.models import MoELanguageModel  # noqa: E402

BYTES_PER_GB = 1e9
FULL = {
    "num_experts": [4, 16, 64, 256, 1024, 4096],
    "model_dim": 64,
    "hidden_dim": 128,
    "k": 4,
    "batch_size": 32,
    "sequence_length": 64,
    "vocabulary_size": 1000,
    "repeats": 5,
    "jit_compile": True,
    "breakdown": True,
}
QUICK = {
    "num_experts": [4, 16],
    "model_dim": 16,
    "hidden_dim": 32,
    "k": 4,
    "batch_size": 4,
    "sequence_length": 8,
    "vocabulary_size": 100,
    "repeats": 1,
    # Compilation is most of a smoke run, and the test suite runs one. XLA
    # compiles the LSTMs' loop in about 6 s per model on a 2-core CPU (the
    # full run compiles the train step with XLA), and the breakdown's four
    # extra functions (the hierarchical MoE alone 3 to 6 s) would double
    # the run.
    "jit_compile": False,
    "breakdown": False,
}
SERIES = ("moe", "train_step", "dense", "every_expert")
BREAKDOWN = ("router", "stream", "adam", "hierarchical")
SERIES_LABELS = {
    "hierarchical": "hierarchical MoE layer (fwd+bwd)",
    "moe": "MoE layer (fwd+bwd)",
    "train_step": "MoE LM train step",
    "dense": "dense FFN, same params",
    "every_expert": "every expert on every token",
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="Smoke run in seconds: E in 4,16, d=16, h=32, 32 tokens, "
             "one timed call, train step without XLA, no breakdown table.")
    parser.add_argument(
        "--out_dir", default="docs",
        help="Where constant_compute.md and constant_compute.png go.")
    parser.add_argument(
        "--num_experts", default=None,
        help="Comma-separated numbers of experts (default: 4,16,64,256,"
             "1024,4096; quick: 4,16).")
    parser.add_argument(
        "--batch_size", type=int, default=None,
        help="Sequences per batch; T = batch_size x sequence_length tokens "
             "(default 32 x 64; quick 4 x 8).")
    parser.add_argument(
        "--repeats", type=int, default=None,
        help="Timed calls per measurement, median (default 5; quick 1).")
    parser.add_argument(
        "--dense_limit_gb", type=float, default=4.0,
        help="Skip the dense and every-expert baselines when their "
             "estimated memory (weights and gradients, plus three "
             "float32 hidden activations of [T, E*h]) exceeds this many "
             "GB (1e9 bytes).")
    return parser.parse_args(argv)


def make_config(args):
    config = dict(QUICK if args.quick else FULL)
    if args.num_experts:
        config["num_experts"] = [int(e) for e in args.num_experts.split(",")]
    if args.repeats is not None:
        config["repeats"] = args.repeats
    if args.batch_size is not None:
        config["batch_size"] = args.batch_size
    if config["repeats"] < 1:
        raise ValueError(
            f"--repeats must be at least 1, received {config['repeats']}.")
    if min(config["num_experts"]) < config["k"]:
        raise ValueError(
            f"--num_experts must all be at least k={config['k']}, received "
            f"{config['num_experts']}.")
    config["num_tokens"] = config["batch_size"] * config["sequence_length"]
    config["dense_limit_gb"] = args.dense_limit_gb
    return config


class RouterOutputs(keras.layers.Layer):
    """The MoE layer's router alone: returns its gate values [T, k]."""

    def __init__(self, router, **kwargs):
        super().__init__(**kwargs)
        self.router = router

    def call(self, inputs, training=None):
        return self.router(inputs, training=training).expert_weights


def dense_loss(weights, x):
    """x [T, d] -> relu(x W1 + b1) [T, E*h] -> W2 + b2, sum of squares."""
    kernel_in, bias_in, kernel_out, bias_out = weights
    hidden = ops.relu(ops.matmul(x, kernel_in) + bias_in)
    return moe_layer.output_loss(ops.matmul(hidden, kernel_out) + bias_out)


def baseline_gb(num_experts, config):
    """Estimated memory of the dense and every-expert baselines, in GB.

    Weights and their gradients, plus three float32 [T, E*h] activations
    (pre-activation, ReLU output and its gradient); the every-expert
    baseline's [E, T, h] hidden tensor has the same size.
    """
    d, h, tokens = (config["model_dim"], config["hidden_dim"],
                    config["num_tokens"])
    weights = num_experts * (2 * d * h + h + d)
    return (2 * weights + 3 * tokens * num_experts * h) * 4 / BYTES_PER_GB


def synchronous(run):
    """A callable that returns only once `run()`'s outputs are computed."""

    def call():
        outputs = run()
        moe_layer.block(outputs)

    return call


def time_round_robin(runs, repeats):
    """Median seconds of each callable in `runs` (a dict), after a warm-up.

    Each callable must return only when its work is done. The timed calls
    go round-robin, so load from other processes falls on all alike.
    """
    for run in runs.values():
        run()  # compiles
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def language_model_step(num_experts, config):
    """A callable running one `train_on_batch` of the MoE language model."""
    model = MoELanguageModel.from_preset(
        "tiny_moe", vocabulary_size=config["vocabulary_size"],
        model_dim=config["model_dim"],
        moe={"expert_hidden_dim": config["hidden_dim"],
             "num_experts": num_experts, "k": config["k"]}, seed=0)
    model.compile(optimizer="adam", jit_compile=config["jit_compile"])
    rng = np.random.default_rng(0)
    shape = (config["batch_size"], config["sequence_length"])
    inputs = rng.integers(0, config["vocabulary_size"], shape, dtype="int32")
    targets = rng.integers(0, config["vocabulary_size"], shape, dtype="int32")

    def run():
        # train_on_batch returns NumPy values: it has waited for the step.
        model.train_on_batch(inputs, targets)

    return model, run


def optimizer_update(model):
    """A callable running the model's compiled Adam update alone.

    The gradients are constants with the shapes of the trainable weights;
    the optimizer must have been built (by a first `train_on_batch`)
    before the first call.
    """
    optimizer = model.optimizer
    state = {}

    def first_call():
        variables = model.trainable_variables
        if not variables or not optimizer.built:
            raise ValueError("Build the model and its optimizer (one "
                             "train_on_batch) before timing its update.")
        gradients = [ops.full(v.shape, 1e-3, dtype=v.dtype)
                     for v in variables]
        if moe_layer.backend_name() == "jax":
            import jax
            step = jax.jit(optimizer.stateless_apply)
            state["optimizer"] = [v.value for v in optimizer.variables]
            state["trainable"] = [v.value for v in variables]

            def update():
                state["trainable"], state["optimizer"] = step(
                    state["optimizer"], gradients, state["trainable"])
                moe_layer.block(state["trainable"])
        else:
            import tensorflow as tf

            @tf.function(jit_compile=True)
            def step():
                optimizer.apply(gradients, variables)
                return optimizer.iterations + 0

            def update():
                moe_layer.block(step())

        state["update"] = update

    def run():
        if "update" not in state:
            first_call()
        state["update"]()

    return run


def hierarchical_layer(num_experts, config):
    """The paper's hierarchical MoE with the same experts, or None.

    G = 2**floor(log2(E) / 2) groups of E / G experts (64 x 64 at 4096),
    k = 2 groups, then 2 experts in each: 4 experts per token, as the flat
    layer. Its gates cost O(G + 2 E / G) per token instead of O(E).
    """
    groups = 2 ** (int(math.log2(num_experts)) // 2)
    if num_experts % groups or num_experts // groups < 2:
        return None
    return HierarchicalMixtureOfExperts(
        groups, num_experts // groups, 2, 2,
        expert_hidden_dim=config["hidden_dim"], seed=0)


def measure(num_experts, config):
    """Times one table row; returns a dict of the row's values."""
    d, h, k, tokens = (config["model_dim"], config["hidden_dim"],
                       config["k"], config["num_tokens"])
    seed = keras.random.SeedGenerator(1234)
    inputs = keras.random.normal((tokens, d), seed=seed)

    layer = MixtureOfExperts(num_experts, h, k=k, seed=0)
    layer.build((tokens, d))
    router = RouterOutputs(layer.router)
    router.build((tokens, d))
    expert_weights = moe_layer.backend_values(layer.experts.trainable_variables)
    stream = moe_layer.compile_function(moe_layer.stream_weights)
    model, train_step = language_model_step(num_experts, config)
    runs = {
        "moe": synchronous(moe_layer.layer_train_step(layer, inputs)),
        "train_step": train_step,
    }
    hierarchical = None
    if config["breakdown"]:
        runs["adam"] = optimizer_update(model)
        runs["router"] = synchronous(
            moe_layer.layer_train_step(router, inputs))
        runs["stream"] = synchronous(lambda: stream(expert_weights))
        hierarchical = hierarchical_layer(num_experts, config)
        if hierarchical is not None:
            hierarchical.build((tokens, d))
            runs["hierarchical"] = synchronous(
                moe_layer.layer_train_step(hierarchical, inputs))

    memory_gb = baseline_gb(num_experts, config)
    run_baselines = memory_gb <= config["dense_limit_gb"]
    if run_baselines:
        hidden = num_experts * h
        dense_weights = [
            keras.random.normal((d, hidden), seed=seed) / math.sqrt(d),
            ops.zeros((hidden,)),
            keras.random.normal((hidden, d), seed=seed) / math.sqrt(hidden),
            ops.zeros((d,)),
        ]
        dense_step = moe_layer.compile_value_and_grad(dense_loss)
        every_expert_weights = moe_layer.backend_values([
            layer.router.kernel, layer.experts.kernel_in,
            layer.experts.bias_in, layer.experts.kernel_out,
            layer.experts.bias_out])
        every_expert_step = moe_layer.compile_value_and_grad(
            moe_layer.every_expert_loss_fn(k))
        runs["dense"] = synchronous(
            lambda: dense_step(dense_weights, inputs))
        runs["every_expert"] = synchronous(
            lambda: every_expert_step(every_expert_weights, inputs))
    else:
        print(f"  E={num_experts}: dense and every-expert skipped, estimated "
              f"{memory_gb:.1f} GB > --dense_limit_gb="
              f"{config['dense_limit_gb']:g}", flush=True)

    seconds = time_round_robin(runs, config["repeats"])
    capacity = dispatch.expert_capacity(tokens, num_experts, k,
                                        layer.capacity_factor)
    row = {
        "num_experts": num_experts,
        "expert_params": int(layer.experts.count_params()),
        "dense_params": (2 * d * num_experts * h + num_experts * h + d),
        "tokens_per_expert": tokens * k / num_experts,
        "capacity": capacity,
        # Multiply-adds of the gate's two matmuls (clean and noise logits)
        # over those of the experts' E * capacity rows.
        "gate_to_expert_macs": (2 * tokens * d * num_experts)
                               / (num_experts * capacity * 2 * d * h),
        "baseline_gb": memory_gb,
    }
    for name in SERIES + BREAKDOWN:
        row[name] = (seconds[name] / tokens * 1e6 if name in seconds
                     else None)
    del runs, model, train_step, layer, router, expert_weights, stream
    del hierarchical
    keras.backend.clear_session()
    gc.collect()
    return row


# Output.


def format_us(value):
    return "skipped" if value is None else f"{value:.3g}"


def format_ratio(value, first):
    if value is None or first is None:
        return "-"
    return f"{value / first:.2f}x"


MAIN_HEADERS = ("experts", "expert params", "MoE layer µs/token", "vs E=4",
                "train step µs/token", "vs E=4", "dense µs/token", "vs E=4",
                "every-expert µs/token", "vs E=4")
DETAIL_HEADERS = ("experts", "tokens/expert (T·k/E)", "capacity",
                  "gate/expert multiply-adds", "router µs/token",
                  "router share of MoE", "weight-streaming floor µs/token",
                  "floor share of MoE", "Adam update µs/token",
                  "Adam share of train step", "hierarchical MoE µs/token",
                  "vs E=4")


def main_cells(row, first):
    cells = [str(row["num_experts"]), f"{row['expert_params']:,}"]
    for name in SERIES:
        cells += [format_us(row[name]),
                  format_ratio(row[name], first[name])]
    return cells


def detail_cells(row, first):
    return [
        str(row["num_experts"]),
        f"{row['tokens_per_expert']:g}",
        str(row["capacity"]),
        f"{row['gate_to_expert_macs']:.3g}",
        format_us(row["router"]),
        f"{row['router'] / row['moe']:.0%}",
        format_us(row["stream"]),
        f"{row['stream'] / row['moe']:.0%}",
        format_us(row["adam"]),
        f"{row['adam'] / row['train_step']:.0%}",
        format_us(row["hierarchical"]),
        format_ratio(row["hierarchical"], first["hierarchical"]),
    ]


def markdown_table(headers, body):
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def growth_lines(rows):
    """One line per series: its time per token at the largest E it ran at,
    as a multiple of its time at the smallest."""
    lines = []
    for name in SERIES + ("hierarchical",):
        measured = [row for row in rows if row[name] is not None]
        if len(measured) < 2:
            continue
        first, last = measured[0], measured[-1]
        lines.append(
            f"- {SERIES_LABELS[name]}: {last[name] / first[name]:.2f}x "
            f"from E={first['num_experts']} to E={last['num_experts']} "
            f"(expert parameters "
            f"{last['expert_params'] / first['expert_params']:.0f}x).")
    return lines


def write_plot(rows, config, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    markers = {"moe": "o", "train_step": "s", "dense": "^",
               "every_expert": "v", "hierarchical": "D"}
    for name in SERIES + ("hierarchical",):
        points = [(row["expert_params"], row[name]) for row in rows
                  if row[name] is not None]
        if points:
            params, values = zip(*points)
            axes.plot(params, values, marker=markers[name],
                      linestyle="--" if name == "hierarchical" else "-",
                      label=SERIES_LABELS[name])
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("expert parameters (E x (2dh + h + d))")
    axes.set_ylabel("time per token (µs)")
    axes.set_title(
        f"Time per token as experts grow (k={config['k']}, "
        f"d={config['model_dim']}, h={config['hidden_dim']}, "
        f"T={config['num_tokens']}, {moe_layer.backend_name()})")
    for row in rows:
        axes.annotate(f"E={row['num_experts']}",
                      (row["expert_params"], row["moe"]),
                      textcoords="offset points", xytext=(0, -12),
                      ha="center", fontsize=7)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    config = make_config(args)
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    load_before = os.getloadavg()

    machine = moe_layer.machine_description()
    settings = (
        f"T={config['num_tokens']} tokens ({config['batch_size']} x "
        f"{config['sequence_length']} for the train step), "
        f"d={config['model_dim']}, h={config['hidden_dim']}, "
        f"k={config['k']} (noisy top-k), capacity factor 1.25, float32, "
        f"vocabulary {config['vocabulary_size']}, train step "
        f"jit_compile={config['jit_compile']}; median of "
        f"{config['repeats']} after a warm-up; dense and every-expert "
        f"skipped above {config['dense_limit_gb']:g} GB.")
    print(machine)
    print(settings, flush=True)
    rows = []
    for num_experts in config["num_experts"]:
        rows.append(measure(num_experts, config))
        row = rows[-1]
        print(f"  E={num_experts}: " + ", ".join(
            f"{name} {format_us(row[name])} µs/token"
            for name in SERIES + BREAKDOWN
            if name in SERIES or row[name] is not None), flush=True)

    first = rows[0]
    main_table = markdown_table(MAIN_HEADERS,
                                [main_cells(row, first) for row in rows])
    if config["breakdown"]:
        detail_table = markdown_table(
            DETAIL_HEADERS, [detail_cells(row, first) for row in rows])
        breakdown = [
            "Where the time goes (router: the MoE layer's gate alone, "
            "forward+backward; weight-streaming floor: the expert weights "
            "read twice and written once, as a backward pass must write "
            "their gradients; Adam update: the language model's compiled "
            "optimizer step alone, on constant gradients; hierarchical MoE: "
            "`HierarchicalMixtureOfExperts` with the same experts in "
            "2**floor(log2(E)/2) groups, 2 groups x 2 experts per token, "
            "forward+backward):",
            "",
            detail_table,
        ]
    else:
        detail_table = "(No breakdown with --quick.)"
        breakdown = [detail_table]
    growth = growth_lines(rows)
    elapsed = time.perf_counter() - start
    load_after = os.getloadavg()
    command = " ".join(["python bench/constant_compute.py"] + argv)
    document = "\n".join([
        "# Constant compute as capacity grows",
        "",
        "Time per token of a `MixtureOfExperts` layer (noisy top-k) and of a "
        "`MoELanguageModel` training step as the number of experts grows at "
        "fixed k, next to a dense feed-forward layer with the same parameters "
        "and an every-expert-on-every-token MoE (Shazeer et al. 2017; issue 8, "
        "claim 3). Written by `bench/constant_compute.py`; see "
        "`bench/README.md` for what each column times and why the flat "
        "layer's time grows past 256 experts.",
        "",
        f"- Command: `{command}` ({elapsed:.0f} s wall)",
        f"- Machine: {machine}",
        f"- Load average (1 min) before / after: {load_before[0]:.2f} / "
        f"{load_after[0]:.2f}",
        f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- Settings: {settings}",
        "",
        main_table,
        "",
        "Growth of time per token:",
        "",
        *growth,
        "",
        *breakdown,
        "",
        "![time per token against expert parameters](constant_compute.png)",
        "",
    ])
    print()
    print(main_table)
    print()
    print("\n".join(growth))
    print()
    print(detail_table)
    print(f"\n{elapsed:.0f} s wall; load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    with open(os.path.join(args.out_dir, "constant_compute.md"), "w",
              encoding="utf-8") as file:
        file.write(document)
    write_plot(rows, config, os.path.join(args.out_dir,
                                          "constant_compute.png"))
    return rows


if __name__ == "__main__":
    main()
