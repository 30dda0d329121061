"""What the quality benchmarks share: resumable rows, seed summaries and
their markdown tables."""

import datetime
import json
import math
import os
import platform

import numpy as np

# The repository and its bundled corpora.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "data")
METRIC = "test perplexity"


def check_positive(fail, args, names):
    """Calls `fail(message)` for the first flag of `names` in `args`
    below 1 (e.g. `fail=parser.error`)."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            fail(f"--{name} must be positive, received {value}")


def cached(rows_dir, name, compute):
    """A row from `<rows_dir>/<name>.json`, or `compute()` written there
    (atomically, so a stopped run leaves whole rows only)."""
    path = os.path.join(rows_dir, name + ".json")
    if os.path.exists(path):
        with open(path) as file:
            return json.load(file)
    row = compute()
    os.makedirs(rows_dir, exist_ok=True)
    with open(path + ".tmp", "w") as file:
        json.dump(row, file)
    os.replace(path + ".tmp", path)
    print(json.dumps(row), flush=True)
    return row


def training_run(model, run_dir, label, seed, train_files, args,
                 log_every, **options):
    """The resumable `sgmoe.training.TrainingRun` of one (model, seed) in
    `run_dir`: `args.train_steps` steps, a checkpoint every
    `args.checkpoint_every`; a resume with another model, seed, data,
    batch size, learning rate or warm-up is refused. `options` go to
    `TrainingRun` (e.g. `validation_data` and `eval_every`)."""
    from sgmoe import training

    setup = {"model": label, "seed": seed, "config": model.get_config(),
             "train_files": training.file_fingerprints(train_files),
             "batch_size": args.batch_size,
             "learning_rate": args.learning_rate}
    if getattr(args, "warmup_steps", 0):
        setup["warmup_steps"] = args.warmup_steps
    if getattr(args, "block_size", None) is not None:
        setup["block_size"] = args.block_size
    return training.TrainingRun(
        model, train_steps=args.train_steps,
        log_every=min(log_every, args.train_steps), model_dir=run_dir,
        checkpoint_every=args.checkpoint_every, setup=setup, **options)


def summarize(rows, keys, means=(), metric=METRIC):
    """Per value of `keys`, in order of first appearance: the mean,
    spread (max - min) and per-seed values of `metric`, the first row's
    parameters, and the mean of each column in `means` over the rows
    where it is finite."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    summary = []
    for key, group in groups.items():
        values = [row[metric] for row in group]
        entry = dict(
            zip(keys, key), parameters=group[0]["parameters"],
            mean=float(np.mean(values)),
            spread=float(np.max(values) - np.min(values)),
            values=values, seeds=[row["seed"] for row in group],
            per_seed=" ".join(f"{v:.2f}" for v in values))
        for column in means:
            # A row finished by an earlier invocation has no words/s (nan).
            finite = [row[column] for row in group
                      if np.isfinite(row[column])]
            entry[column] = float(np.mean(finite)) if finite else math.nan
        summary.append(entry)
    return summary


def paired_differences(rows, keys, first, second, metric=METRIC):
    """Per seed, `metric` of `first` minus `second` (key tuples): a line
    with the differences, their mean and spread, or None."""
    by_seed = {}
    for row in rows:
        by_seed.setdefault(row["seed"], {})[
            tuple(row[key] for key in keys)] = row[metric]
    differences = [values[first] - values[second]
                   for _, values in sorted(by_seed.items())
                   if first in values and second in values]
    if not differences:
        return None
    first, second = (" ".join(map(str, key)) for key in (first, second))
    return (f"{first} minus {second}, per seed: "
            + " ".join(f"{d:+.2f}" for d in differences)
            + f" (mean {np.mean(differences):+.2f}, spread "
            f"{np.max(differences) - np.min(differences):.2f})")


def format_value(value):
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}" if abs(value) < 1e3 else f"{value:,.0f}"


def print_row(row):
    """One measured row on one line, as it comes in."""
    print(", ".join(f"{key}: {format_value(value)}"
                    for key, value in row.items()), flush=True)


def rows_table(rows, columns, text_columns=1):
    """A markdown table of `rows` (dicts) in `columns`; the first
    `text_columns` left-aligned, the rest right-aligned numbers."""
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(["---"] * text_columns + ["---:"] * (
                 len(columns) - text_columns)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(
        format_value(row[column]) for column in columns) + " |"
        for row in rows])


def markdown(summary, keys, means=(), metric=METRIC):
    """The table of `summarize`'s output."""
    columns = (list(keys) + ["parameters", f"{metric} (mean)",
                             "spread (max - min)", "per seed"]
               + list(means))
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(["---"] * len(keys)
                            + ["---:"] * (len(columns) - len(keys))) + "|"]
    for row in summary:
        lines.append("| " + " | ".join(
            [str(row[key]) for key in keys]
            + [f"{row['parameters']:,}", f"{row['mean']:.2f}",
               f"{row['spread']:.2f}", row["per_seed"]]
            + [format_value(row[column]) for column in means]) + " |")
    return "\n".join(lines)


def header(script, argv, seconds, setting):
    """The line above a table: the command, date, machine and setting."""
    import keras

    command = " ".join([f"python bench/{script}"] + list(argv))
    return (f"`{command}` ({datetime.date.today()}, {seconds / 60:.1f} min "
            f"this invocation): {os.cpu_count()} CPU cores "
            f"({platform.machine()}), Keras {keras.__version__} on "
            f"{keras.backend.backend()}; {setting}")


def write_table(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as file:
        file.write(text + "\n")
    print(text)
    return path
