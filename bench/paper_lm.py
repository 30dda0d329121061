"""The paper's language-model results in miniature, on any corpus.

Shazeer et al. 2017 (arXiv:1701.06538):

- `--experiment=capacity` (Table 7, Figure 2-left): the computationally
  matched dense baselines (4xLSTM, MoE-1-Wide, MoE-1-Deep) against flat
  MoE-4, MoE-32, MoE-256 and hierarchical MoE-256-h, all at the same small
  width, trained with the same steps, batches and learning rate. Reports
  test perplexity (mean, spread and per seed over `--seeds`),
  ops/timestep, parameters without embedding and softmax, and training
  words/s. The paper: the baselines and MoE-4 about equal, MoE-32 better,
  MoE-256 better still, hierarchical close to flat.
- `--experiment=balancing` (Table 6): MoE-256 trained with
  w_importance / w_load in {0/0, 0.2/0, 0/0.2, 0.1/0.1, 0.01/0.01, 1/1}.
  Reports test perplexity, CV(Importance), CV(Load) and max/mean Load. The
  paper: without the losses CV about 3 and max/mean load about 18, with
  them CV < 0.5 and max/mean load < 1.5.

Widths are the paper's scaled by model_dim / 512 (experts 512 -> 1024 ->
512 become d -> 2d -> d; MoE-1-Wide's single expert 8d wide), so the
ops/timestep of all models stay matched; the softmax is over a word
vocabulary of the training text (sampled in training with
`--num_sampled`, exact in evaluation). As in the paper, CV(Importance),
CV(Load) and max/mean Load are those of the gating network in training
mode (noise on; Load is the paper's smooth estimator), here summed over
`--statistics_batches` test batches run without a weight update. The
evaluation-mode routing (no noise) is reported next to them: the max/mean
number of tokens per expert over the whole test set, and the mean fraction
of assignments dropped (0 unless an evaluation capacity is set: the MoE
layers drop nothing at inference by default).

Each (model, seed) trains with `sgmoe.training.TrainingRun` in
`<work_dir>/<experiment>/<model>-seed<seed>` (checkpoints every
`--checkpoint_every` steps, TensorBoard logs, and at the end the model as
a preset with its vocabulary, which scripts/inspect_experts.py reads);
its finished row is kept in `<out_dir>/lm_<experiment>_rows/`. The same
command started again skips the finished rows and resumes the others from
their last checkpoint, so a stopped run loses at most
`--checkpoint_every` steps (words/s is that of the steps the finishing
invocation trained, compilation included).

    python bench/paper_lm.py --experiment=capacity   # writes docs/lm_capacity.{md,png}
    python bench/paper_lm.py --experiment=balancing  # writes docs/lm_balancing.md
    python bench/paper_lm.py --experiment=capacity \\
        --train_files=data/manuals.train.txt.gz \\
        --eval_files=data/manuals.valid.txt.gz \\
        --test_files=data/manuals.test.txt.gz
    python bench/paper_lm.py --quick --out_dir=/tmp/smoke --work_dir=/tmp/smoke
"""

import argparse
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import DATA_DIR  # noqa: E402
from _report import ROOT  # noqa: E402
from _report import cached  # noqa: E402
from _report import check_positive  # noqa: E402
from _report import header  # noqa: E402
from _report import markdown  # noqa: E402
from _report import paired_differences  # noqa: E402
from _report import summarize  # noqa: E402
from _report import training_run  # noqa: E402
from _report import write_table  # noqa: E402

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
# Arguments every model gets from the data and the bench's own flags.
BENCH_KEYS = ("vocabulary_size", "model_dim", "num_sampled", "padding_id",
              "seed")
# The configurations of one kind of layer: an --hparams key under one of
# them changes the models with such a layer and leaves the others alone.
LAYER_CONFIGS = ("moe", "feed_forward")
BALANCING_WEIGHTS = [(0.0, 0.0), (0.2, 0.0), (0.0, 0.2), (0.1, 0.1),
                     (0.01, 0.01), (1.0, 1.0)]
BALANCING_COLUMNS = ["CV(Importance)", "CV(Load)", "max/mean Load",
                     "eval max/mean tokens", "eval dropped"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["capacity", "balancing"],
                        default="capacity")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: 2 models, a few steps, tiny width.")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"),
                        help="Where the table, plot and rows go.")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "runs",
                                                           "paper_lm"),
                        help="Checkpoints, logs and models of each run.")
    parser.add_argument("--train_files",
                        default=os.path.join(DATA_DIR, "brown.train.txt.gz"))
    parser.add_argument("--eval_files",
                        default=os.path.join(DATA_DIR, "brown.valid.txt.gz"))
    parser.add_argument("--test_files",
                        default=os.path.join(DATA_DIR, "brown.test.txt.gz"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--models", default="",
                        help="Comma-separated labels of the models to run "
                        "(capacity: MoE-32, ...; balancing: the weights "
                        "w_importance/w_load, e.g. 0/0,0.1/0.1); default: "
                        "all.")
    parser.add_argument("--train_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--model_dim", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--warmup_steps", type=int, default=0,
                        help="The paper's schedule (Appendix C.1: 1000): a "
                        "linear warm-up over this many steps to "
                        "--learning_rate, then decay as 1/sqrt(step) "
                        "(sgmoe.optimizers.WarmupInverseSquareRoot); 0: a "
                        "constant --learning_rate.")
    parser.add_argument("--hparams", default="",
                        help="Overrides of every model's arguments, as the "
                        "scripts' --hparams (sgmoe.models.config_overrides),"
                        " e.g. 'dropout=0' or 'moe.output_activation=linear'"
                        ": moe.* and feed_forward.* change the models with "
                        "such a layer; a key no model of the run takes, or "
                        "one the bench or the experiment sets, is refused.")
    parser.add_argument("--vocabulary_size", type=int, default=8000)
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--num_sampled", type=int, default=0,
                        help="Sampled softmax in training with this many "
                        "candidates; 0: the exact softmax.")
    parser.add_argument("--block_size", type=int, default=0,
                        help="Training sentences shuffled together (see "
                        "sgmoe.data.language_model_dataset); 0: all the "
                        "training sentences, a full shuffle every epoch.")
    parser.add_argument("--checkpoint_every", type=int, default=250)
    parser.add_argument("--jit_compile", type=int, default=1,
                        help="1: compile the steps with XLA (0 in --quick).")
    parser.add_argument("--statistics_batches", type=int, default=20,
                        help="Test batches run in training mode for the "
                        "Importance / Load statistics.")
    parser.add_argument("--eval_batches", type=int, default=0,
                        help="Evaluate on the first N test batches; 0: all.")
    parser.add_argument("--eval_every", type=int, default=0,
                        help="Validation perplexity on the first "
                        "--curve_batches validation batches every N steps "
                        "(the learning curves); 0: none.")
    parser.add_argument("--curve_batches", type=int, default=50)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.model_dim, args.vocabulary_size = 4, 8, 300
        args.eval_batches, args.jit_compile = 3, False
        args.statistics_batches, args.checkpoint_every = 2, 2
    check_positive(parser.error, args, (
        "train_steps", "batch_size", "model_dim", "vocabulary_size",
        "max_length", "checkpoint_every", "curve_batches"))
    if args.warmup_steps < 0:
        parser.error("--warmup_steps must be 0 (a constant rate) or positive")
    if args.block_size < 0:
        parser.error("--block_size must be 0 (all) or positive")
    from sgmoe.models import parse_overrides

    try:
        args.overrides = parse_overrides(args.hparams)
    except ValueError as error:
        parser.error(f"--hparams: {error}")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, received "
                     f"{args.seeds!r}")
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
    """(label, preset, overrides) of each model of the experiment, those
    of --models alone when it is given (labels compared without spaces),
    with --hparams."""
    from sgmoe.models.language_model_presets import PRESETS

    if args.experiment == "capacity":
        models = [(label, preset, _widths(preset, widths, args.model_dim))
                  for label, preset, widths in CAPACITY_MODELS]
        if args.quick:
            models = [models[0], models[-1]]
    else:
        weights = BALANCING_WEIGHTS[:2] if args.quick else BALANCING_WEIGHTS
        models = [(f"{w_importance:g} / {w_load:g}", "moe_256",
                   {"moe": {"expert_hidden_dim": 2 * args.model_dim,
                            "router_args": {"importance_weight": w_importance,
                                            "load_weight": w_load}}})
                  for w_importance, w_load in weights]
    if args.models:
        def key(label):
            return label.replace(" ", "")

        wanted = [key(label) for label in args.models.split(",")]
        unknown = set(wanted) - {key(label) for label, _, _ in models}
        if unknown:
            raise SystemExit(f"paper_lm: unknown --models {sorted(unknown)}; "
                             f"the {args.experiment} experiment has "
                             f"{[label for label, _, _ in models]}")
        models = [model for model in models if key(model[0]) in wanted]
    for key in LAYER_CONFIGS:
        if key in args.overrides and not any(
                PRESETS[preset].get(key) for _, preset, _ in models):
            raise SystemExit(
                f"paper_lm: --hparams {key}.*: none of the models "
                f"{[label for label, _, _ in models]} has a {key} layer")
    return [(label, preset, with_hparams(args, label, preset, overrides))
            for label, preset, overrides in models]


def dotted_keys(overrides, prefix=""):
    """The leaf keys of a nested override dict, as "a.b.c"."""
    keys = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            keys += dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def with_hparams(args, label, preset, overrides):
    """The model's overrides with --hparams over them (its moe.* and
    feed_forward.* keys only where the model has such a layer), checked
    now, before any data is read: a key the bench sets (from the data and
    its flags) or the experiment varies, an unknown key and a value the
    model refuses end the run with one line."""
    from sgmoe import models
    from sgmoe.models.language_model_presets import PRESETS

    hparams = {key: value for key, value in args.overrides.items()
               if key not in LAYER_CONFIGS or PRESETS[preset].get(key)}
    if not hparams:
        return overrides
    taken = set(BENCH_KEYS) | set(dotted_keys(overrides))
    for key in dotted_keys(hparams):
        clash = [other for other in taken if key == other
                 or key.startswith(other + ".") or other.startswith(key + ".")]
        if clash:
            raise SystemExit(
                f"paper_lm: --hparams {key!r} is set by the bench or the "
                f"{args.experiment} experiment for {label} ({clash[0]}), "
                "not by --hparams")
    overrides = models.config_overrides.merge(overrides, hparams)
    try:
        config = models.apply_overrides(models.MoELanguageModel,
                                        PRESETS[preset], overrides)
        models.MoELanguageModel(**dict(
            config, vocabulary_size=args.vocabulary_size,
            model_dim=args.model_dim, num_sampled=args.num_sampled or None,
            padding_id=0))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"paper_lm: --hparams for {label}: {error}")
    return overrides


def slug(label):
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")


def validation_curve(log_dir):
    """[[step, validation perplexity], ...] from a run's TensorBoard
    validation logs (a step logged twice, by a resumed run, keeps its last
    value)."""
    from sgmoe.evaluation import logged_history

    history = logged_history(log_dir, "val/perplexity") or {}
    return [[step, float(value)] for step, value in history.items()]


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
        # On JAX, evaluate() detaches the variables' values between steps;
        # a callback that reads them puts them back first.
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
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


class Experiment:
    """The data, vocabulary and recipe shared by every (model, seed)."""

    def __init__(self, args):
        from sgmoe import data

        self.args = args
        self.data = data
        self.work_dir = os.path.join(args.work_dir, args.experiment)
        self.vocabulary = data.WordVocabulary.build(
            args.train_files, vocabulary_size=args.vocabulary_size)
        self.corpus = os.path.basename(
            data.expand_file_patterns(args.train_files)[0]).split(".")[0]
        # The bundled corpora are in document order (Brown by genre, the
        # manuals by package): a window smaller than the corpus would train
        # on one domain after another.
        self.block_size = args.block_size or data.count_lines(
            args.train_files)

    def run_dir(self, label, seed):
        """The TrainingRun directory of one (model, seed)."""
        return os.path.join(self.work_dir, f"{slug(label)}-seed{seed}")

    def dataset(self, files, **options):
        return self.data.language_model_dataset(
            files, self.vocabulary, self.args.batch_size,
            self.args.max_length, **options)

    def test_batches(self):
        test = self.dataset(self.args.test_files)
        if self.args.eval_batches:
            test = test.take(self.args.eval_batches)
        return test

    def build(self, preset, overrides, seed):
        from sgmoe import models
        from sgmoe import optimizers
        from sgmoe.models.config_overrides import merge
        from sgmoe.models.language_model_presets import PRESETS

        args = self.args
        keras.utils.set_random_seed(seed)  # the initial weights too
        config = models.apply_overrides(models.MoELanguageModel,
                                        PRESETS[preset], overrides)
        model = models.MoELanguageModel(**merge(config, dict(
            vocabulary_size=len(self.vocabulary),
            model_dim=args.model_dim, num_sampled=args.num_sampled or None,
            padding_id=0, seed=seed)))
        model.build((None, None))
        learning_rate = (optimizers.WarmupInverseSquareRoot(
            args.learning_rate, warmup_steps=args.warmup_steps)
            if args.warmup_steps else args.learning_rate)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      metrics=[models.Perplexity(padding_id=0)],
                      jit_compile=bool(args.jit_compile))
        return model

    def train(self, label, model, seed):
        """Trains (resuming) in the run's directory; returns words/s."""
        from sgmoe import training

        args = self.args
        run_dir = self.run_dir(label, seed)
        curve = ({} if not args.eval_every else dict(
            eval_every=args.eval_every, validation_data=self.dataset(
                args.eval_files).take(args.curve_batches)))
        run = training_run(
            model, run_dir, label, seed,
            self.data.expand_file_patterns(args.train_files), args,
            log_every=100, **curve)
        first_step = run.first_step

        def stream(skip_batches):
            return self.dataset(args.train_files, shuffle=True, seed=seed,
                                repeat=True, skip_batches=skip_batches,
                                block_size=self.block_size)

        keras.utils.set_random_seed(seed)
        seconds = run.fit(stream)
        words = sum(int(np.count_nonzero(targets)) for _, targets in
                    stream(first_step).take(args.train_steps - first_step))
        self.vocabulary.save(run_dir)
        model.save_to_preset(os.path.join(run_dir, "model"),
                             vocabulary=self.vocabulary)
        training.unlock_model_dir(run_dir)
        return words / seconds if words and seconds else float("nan")

    def row(self, label, preset, overrides, seed):
        from sgmoe import models
        from sgmoe.layers import find_moe_layers

        model = self.build(preset, overrides, seed)
        words_per_second = self.train(label, model, seed)
        moe_layers = find_moe_layers(model)
        totals = RoutingTotals(moe_layers)
        test = self.test_batches()
        row = {
            "model": label, "seed": seed,
            "test perplexity": model.evaluate(
                test, verbose=0, return_dict=True,
                callbacks=[totals])["perplexity"],
            "validation perplexity": model.evaluate(
                self.dataset(self.args.eval_files), verbose=0,
                return_dict=True)["perplexity"],
            "ops/timestep": models.ops_per_timestep(model.get_config()),
            "parameters": models.count_parameters(model.get_config()),
            "words/s": words_per_second,
        }
        if self.args.eval_every:
            row["validation curve"] = validation_curve(
                os.path.join(self.run_dir(label, seed), "logs", "validation"))
        if moe_layers:
            importance, load = training_mode_statistics(
                model, moe_layers, test.take(self.args.statistics_batches))
        for name in moe_layers:  # the one MoE layer of these models
            tokens = totals.load[name]
            row.update({
                "CV(Importance)": cv(importance[name]),
                "CV(Load)": cv(load[name]),
                "max/mean Load": float(np.max(load[name])
                                       / np.mean(load[name])),
                "eval max/mean tokens": float(np.max(tokens)
                                              / np.mean(tokens)),
                "eval dropped": float(np.mean(totals.dropped[name])),
            })
        return row


def write_outputs(args, experiment, rows, seconds, argv):
    labels = [label for label, _, _ in models_to_train(args)]
    if args.experiment == "capacity":
        means = ["ops/timestep", "words/s"]  # in every row
    else:
        means = BALANCING_COLUMNS  # in every row: all MoE-256
        rows = [dict(row, model=f"w_importance / w_load = {row['model']}")
                for row in rows]
        labels = [f"w_importance / w_load = {label}" for label in labels]
    summary = summarize(rows, ["model"], means)
    table = markdown(summary, ["model"], means)
    pairs = ([(labels[i], labels[i + 1]) for i in range(len(labels) - 1)]
             if args.experiment == "capacity" else
             [(label, labels[0]) for label in labels[1:]])
    lines = [paired_differences(rows, ["model"], (first,), (second,))
             for first, second in pairs]
    table += "".join(f"\n\n{line}" for line in lines if line)
    curves = mean_curves(rows, labels)
    if curves:
        table += "\n\n" + curve_table(curves, args.curve_batches)
        plot_curves(curves, experiment.corpus, os.path.join(
            args.out_dir, f"lm_{args.experiment}_curves.png"))
    setting = (
        f"{experiment.corpus} corpus ({args.train_files}; test "
        f"{args.test_files}), vocabulary {len(experiment.vocabulary)} words, "
        f"model_dim {args.model_dim}, {args.train_steps} steps of "
        f"{args.batch_size} sentences (shuffled in blocks of "
        f"{experiment.block_size:,}), Adam {args.learning_rate:g}"
        + (f" after a {args.warmup_steps}-step warm-up, then 1/sqrt(step), "
           if args.warmup_steps else ", ")
        + (f"--hparams {args.hparams}, " if args.hparams else "")
        + (f"sampled softmax ({args.num_sampled}) in training, "
           if args.num_sampled else "")
        + f"seeds {','.join(map(str, args.seeds))}.")
    path = write_table(
        os.path.join(args.out_dir, f"lm_{args.experiment}.md"),
        header("paper_lm.py", argv, seconds, setting) + "\n\n" + table)
    if args.experiment == "capacity":
        plot_capacity(summary, experiment.corpus,
                      os.path.join(args.out_dir, "lm_capacity.png"))
    return path


def mean_curves(rows, labels):
    """{label: (steps, mean validation perplexity over the seeds)} at the
    steps every seed of the model logged."""
    curves = {}
    for label in labels:
        seeds = [dict(row["validation curve"]) for row in rows
                 if row["model"] == label and row.get("validation curve")]
        if seeds:
            steps = sorted(set.intersection(*(set(seed) for seed in seeds)))
            curves[label] = (steps, [float(np.mean([seed[step]
                                                    for seed in seeds]))
                                     for step in steps])
    return curves


def curve_table(curves, batches):
    steps = sorted(set().union(*(steps for steps, _ in curves.values())))
    lines = [f"Validation perplexity during training (first {batches} "
             "validation batches, mean over the seeds):", "",
             "| model | " + " | ".join(f"step {step}" for step in steps)
             + " |", "|---|" + "---:|" * len(steps)]
    for label, (model_steps, values) in curves.items():
        at = dict(zip(model_steps, values))
        lines.append(f"| {label} | " + " | ".join(
            f"{at[step]:.2f}" if step in at else "" for step in steps) + " |")
    return "\n".join(lines)


def plot_curves(curves, corpus, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for label, (steps, values) in curves.items():
        axes.plot(steps, values, marker=".", label=label)
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("validation perplexity (mean over seeds)")
    axes.set_title(f"{corpus}: learning curves")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def plot_capacity(summary, corpus, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for entry in summary:
        moe = entry["model"].startswith("MoE-") and "-1-" not in entry[
            "model"]
        low, high = min(entry["values"]), max(entry["values"])
        axes.errorbar(entry["parameters"], entry["mean"],
                      yerr=[[entry["mean"] - low], [high - entry["mean"]]],
                      fmt="o" if moe else "s", capsize=3,
                      color="tab:blue" if moe else "tab:gray")
        axes.annotate(entry["model"], (entry["parameters"], entry["mean"]),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("parameters without embedding and softmax")
    axes.set_ylabel("test perplexity (mean; bars: min-max over seeds)")
    axes.set_title(f"{corpus}, equal ops/timestep (cf. paper Fig. 2-left)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    start = time.time()
    experiment = Experiment(args)
    rows_dir = os.path.join(args.out_dir, f"lm_{args.experiment}_rows")
    rows = [cached(rows_dir, f"{slug(label)}-seed{seed}",
                   lambda: experiment.row(label, preset, overrides, seed))
            for seed in args.seeds
            for label, preset, overrides in models_to_train(args)]
    return write_outputs(args, experiment, rows, time.time() - start, argv)


if __name__ == "__main__":
    main()
