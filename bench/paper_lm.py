"""The paper's language-model results in miniature, on the bundled Brown text.

Shazeer et al. 2017 (arXiv:1701.06538):

- `--experiment=capacity` (Table 7, Figure 2-left): the computationally
  matched dense baselines (4xLSTM, MoE-1-Wide, MoE-1-Deep) against flat
  MoE-4, MoE-32, MoE-256 and hierarchical MoE-256-h, all at the same small
  width, trained with the same steps, batches and learning rate. Reports
  test perplexity, ops/timestep, parameters without embedding and softmax,
  and training words/s. The paper: the baselines and MoE-4 about equal,
  MoE-32 better, MoE-256 better still, hierarchical close to flat.
- `--experiment=balancing` (Table 6): MoE-256 trained with
  w_importance / w_load in {0/0, 0.2/0, 0/0.2, 0.1/0.1, 0.01/0.01, 1/1}.
  Reports test perplexity, CV(Importance), CV(Load) and max/mean Load. The
  paper: without the losses CV about 3 and max/mean load about 18, with
  them CV < 0.5 and max/mean load < 1.5.

Widths are the paper's scaled by model_dim / 512 (experts 512 -> 1024 ->
512 become d -> 2d -> d; MoE-1-Wide's single expert 8d wide), so the
ops/timestep of all models stay matched; the softmax is the full one over a
word vocabulary of the training text. As in the paper, CV(Importance),
CV(Load) and max/mean Load are those of the gating network in training
mode (noise on; Load is the paper's smooth estimator), here summed over
`--statistics_batches` test batches run without a weight update. The
evaluation-mode routing (no noise) is reported next to them: the max/mean
number of tokens per expert over the whole test set, and the mean fraction
of assignments dropped (0 unless an evaluation capacity is set: the MoE
layers drop nothing at inference by default).

    python bench/paper_lm.py --experiment=capacity   # writes docs/lm_capacity.{md,png}
    python bench/paper_lm.py --experiment=balancing  # writes docs/lm_balancing.md
    python bench/paper_lm.py --quick --out_dir=/tmp/smoke
"""

import argparse
import datetime
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA_DIR = os.path.join(ROOT, "data")

# (label, preset, overrides as multiples of model_dim where they are widths)
CAPACITY_MODELS = [
    ("4xLSTM", "4xlstm_512", {}),
    ("MoE-1-Wide", "moe_1_wide", {"expert_hidden_dim": 8}),
    ("MoE-1-Deep", "moe_1_deep", {"expert_hidden_dim": 2}),
    ("MoE-4", "moe_4", {"expert_hidden_dim": 2}),
    ("MoE-32", "moe_32", {"expert_hidden_dim": 2}),
    ("MoE-256", "moe_256", {"expert_hidden_dim": 2}),
    ("MoE-256-h", "moe_256_h", {"expert_hidden_dim": 2}),
]
BALANCING_WEIGHTS = [(0.0, 0.0), (0.2, 0.0), (0.0, 0.2), (0.1, 0.1),
                     (0.01, 0.01), (1.0, 1.0)]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["capacity", "balancing"],
                        default="capacity")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: 2 models, a few steps, tiny width.")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--train_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--model_dim", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--vocabulary_size", type=int, default=8000)
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jit_compile", type=int, default=1,
                        help="1: compile the steps with XLA (0 in --quick).")
    parser.add_argument("--models", default="",
                        help="Comma-separated model labels to run (capacity "
                        "experiment); default: all.")
    parser.add_argument("--statistics_batches", type=int, default=20,
                        help="Test batches run in training mode for the "
                        "Importance / Load statistics.")
    parser.add_argument("--eval_batches", type=int, default=0,
                        help="Evaluate on the first N test batches; 0: all.")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.model_dim, args.vocabulary_size = 4, 8, 300
        args.eval_batches, args.jit_compile = 3, False
        args.statistics_batches = 2
    for name in ("train_steps", "batch_size", "model_dim", "vocabulary_size",
                 "max_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    return args


def _widths(preset, widths, model_dim):
    """The overrides of a preset's expert (or feed-forward) width."""
    from sgmoe.models.language_model_presets import PRESETS

    if not widths:
        return {}
    hidden_dim = widths["expert_hidden_dim"] * model_dim
    if "feed_forward" in PRESETS[preset]:  # the single-expert baselines
        return {"feed_forward": {"hidden_dim": hidden_dim}}
    return {"moe": {"expert_hidden_dim": hidden_dim}}


def models_to_train(args):
    if args.experiment == "capacity":
        models = CAPACITY_MODELS
        if args.quick:
            models = [models[0], models[-1]]
        if args.models:
            wanted = args.models.split(",")
            unknown = set(wanted) - {label for label, _, _ in models}
            if unknown:
                raise SystemExit(f"paper_lm: unknown --models {sorted(unknown)}")
            models = [model for model in models if model[0] in wanted]
        return [(label, preset, _widths(preset, widths, args.model_dim))
                for label, preset, widths in models]
    weights = BALANCING_WEIGHTS[:2] if args.quick else BALANCING_WEIGHTS
    return [(f"{w_importance:g} / {w_load:g}", "moe_256",
             {"moe": {"expert_hidden_dim": 2 * args.model_dim,
                      "router_args": {"importance_weight": w_importance,
                                      "load_weight": w_load}}})
            for w_importance, w_load in weights]


def cv(values):
    return float(np.std(values) / np.mean(values))


class RoutingTotals(keras.callbacks.Callback):
    """Sums each MoE layer's tokens per expert over evaluation batches and
    keeps each batch's dropped fraction."""

    def __init__(self, moe_layers):
        super().__init__()
        self.moe_layers = moe_layers
        self.load = {name: 0.0 for name in moe_layers}
        self.dropped = {name: [] for name in moe_layers}

    def on_test_batch_end(self, batch, logs=None):
        for name, layer in self.moe_layers.items():
            self.load[name] += keras.ops.convert_to_numpy(
                layer.expert_load).astype("float64")
            self.dropped[name].append(float(keras.ops.convert_to_numpy(
                layer.dropped_fraction)))


def training_mode_statistics(model, moe_layers, batches):
    """Importance and the smooth Load of the paper, summed over `batches`
    run in training mode (gating noise on, no weight update)."""
    importance = {name: 0.0 for name in moe_layers}
    load = {name: 0.0 for name in moe_layers}
    for inputs, _ in batches:
        model(inputs, training=True)
        for name, layer in moe_layers.items():
            importance[name] += keras.ops.convert_to_numpy(
                layer.expert_importance).astype("float64")
            load[name] += keras.ops.convert_to_numpy(
                layer.expert_load).astype("float64")
    return importance, load


def train_and_evaluate(args, label, preset, overrides, vocabulary, data,
                       models, training):
    keras.utils.set_random_seed(args.seed)
    from sgmoe.models.language_model_presets import PRESETS
    from sgmoe.models.config_overrides import merge

    model = models.MoELanguageModel(**merge(PRESETS[preset], dict(
        overrides, vocabulary_size=len(vocabulary), model_dim=args.model_dim,
        num_sampled=None, padding_id=0, seed=args.seed)))
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=bool(args.jit_compile))
    train = data.language_model_dataset(
        os.path.join(DATA_DIR, "brown.train.txt.gz"), vocabulary,
        args.batch_size, args.max_length, shuffle=True, seed=args.seed,
        repeat=True)
    test = data.language_model_dataset(
        os.path.join(DATA_DIR, "brown.test.txt.gz"), vocabulary,
        args.batch_size, args.max_length)
    if args.eval_batches:
        test = test.take(args.eval_batches)
    # The first steps compile the model: time only the steps after them.
    warmup = min(20, args.train_steps // 2)
    model.fit(train.take(warmup), epochs=1, verbose=0, shuffle=False)
    timed = train.skip(warmup).take(args.train_steps - warmup)
    start = time.time()
    if args.train_steps > warmup:
        model.fit(timed, epochs=1, verbose=0, shuffle=False)
    seconds = time.time() - start
    words = sum(int(np.count_nonzero(targets)) for _, targets in timed)
    from sgmoe.layers import find_moe_layers

    moe_layers = find_moe_layers(model)
    totals = RoutingTotals(moe_layers)
    perplexity = model.evaluate(test, verbose=0, return_dict=True,
                                callbacks=[totals])["perplexity"]
    row = {
        "model": label,
        "test perplexity": perplexity,
        "ops/timestep": models.ops_per_timestep(model.get_config()),
        "parameters": models.count_parameters(model.get_config()),
        "words/s": words / seconds if words else float("nan"),
    }
    if moe_layers:
        importance, load = training_mode_statistics(
            model, moe_layers, test.take(args.statistics_batches))
    for name in moe_layers:  # the one MoE layer of these models
        row["CV(Importance)"] = cv(importance[name])
        row["CV(Load)"] = cv(load[name])
        row["max/mean Load"] = float(np.max(load[name])
                                     / np.mean(load[name]))
        tokens = totals.load[name]
        row["eval max/mean tokens"] = float(np.max(tokens) / np.mean(tokens))
        row["eval dropped"] = float(np.mean(totals.dropped[name]))
    print(", ".join(f"{key}: {format_value(value)}"
                    for key, value in row.items()), flush=True)
    return row


def format_value(value):
    if isinstance(value, str):
        return value
    if value != value:  # NaN: no MoE layer
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}" if abs(value) < 1e3 else f"{value:,.0f}"


def markdown_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row[column])
                                        for column in columns) + " |")
    return "\n".join(lines)


def write_outputs(args, rows, seconds, argv):
    os.makedirs(args.out_dir, exist_ok=True)
    if args.experiment == "capacity":
        columns = ["model", "test perplexity", "ops/timestep", "parameters",
                   "words/s"]
    else:
        columns = ["model", "test perplexity", "CV(Importance)", "CV(Load)",
                   "max/mean Load", "eval max/mean tokens", "eval dropped"]
        rows = [dict(row, model=f"w_importance / w_load = {row['model']}")
                for row in rows]
    table = markdown_table(rows, columns)
    command = " ".join(["python bench/paper_lm.py"] + list(argv))
    header = (
        f"`{command}` ({datetime.date.today()}, {seconds / 60:.1f} min): "
        f"{os.cpu_count()} CPU cores ({platform.machine()}), Keras "
        f"{keras.__version__} on {keras.backend.backend()}; Brown corpus, "
        f"vocabulary {args.vocabulary_size} words, model_dim "
        f"{args.model_dim}, {args.train_steps} steps of {args.batch_size} "
        f"sentences, Adam {args.learning_rate:g}.")
    path = os.path.join(args.out_dir, f"lm_{args.experiment}.md")
    with open(path, "w") as file:
        file.write(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)
    if args.experiment == "capacity":
        plot_capacity(rows, os.path.join(args.out_dir, "lm_capacity.png"))
    return path


def plot_capacity(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for row in rows:
        moe = row["model"].startswith("MoE-") and "-1-" not in row["model"]
        axes.scatter(row["parameters"], row["test perplexity"],
                     marker="o" if moe else "s",
                     color="tab:blue" if moe else "tab:gray")
        axes.annotate(row["model"], (row["parameters"],
                                     row["test perplexity"]),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("parameters without embedding and softmax")
    axes.set_ylabel("test perplexity")
    axes.set_title("Brown corpus, equal ops/timestep (cf. paper Fig. 2-left)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    from sgmoe import data
    from sgmoe import models
    from sgmoe import training

    start = time.time()
    vocabulary = data.WordVocabulary.build(
        os.path.join(DATA_DIR, "brown.train.txt.gz"),
        vocabulary_size=args.vocabulary_size)
    rows = [train_and_evaluate(args, label, preset, overrides, vocabulary,
                               data, models, training)
            for label, preset, overrides in models_to_train(args)]
    return write_outputs(args, rows, time.time() - start, argv)


if __name__ == "__main__":
    main()
