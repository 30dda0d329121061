"""Where two language models differ: test loss by the target word's rank.

Reads trained word-level language models (directories with `model/` and
`vocabulary.txt`: `scripts/train_lm.py`'s `--model_dir`, or
`bench/paper_lm.py`'s `<work_dir>/<experiment>/<model>-seed<N>`), runs
each over the first `--max_sentences` sentences of `--text_files` with the
exact softmax, and groups the targets' cross-entropy by what the target
is: `</S>`, `<UNK>`, or a word by its rank in the training vocabulary
(`--rank_bounds`). For each group it reports the share of the targets,
each model's mean cross-entropy (mean and spread over its runs, e.g.
seeds) and, for the second model against the first, the group's share of
the whole difference in mean cross-entropy (the group's summed per-target
difference over all targets): where one model's advantage comes from.
All the models must share one vocabulary.

    python bench/loss_by_frequency.py \\
        --run=4xLSTM:runs/work/capacity/4xLSTM-seed1,runs/work/capacity/4xLSTM-seed2 \\
        --run=MoE-4:runs/work/capacity/MoE-4-seed1,runs/work/capacity/MoE-4-seed2 \\
        --text_files=data/manuals.test.txt.gz --out=docs/loss_by_rank.md
    python bench/loss_by_frequency.py --quick --out_dir=/tmp/smoke
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench import _report  # noqa: E402
from sgmoe import data  # noqa: E402
from sgmoe import models  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", action="append", default=[],
        help="LABEL:DIR[,DIR...], a model and its runs (e.g. seeds); "
             "given twice or more, the first is the one compared against.")
    parser.add_argument("--text_files", default="data/brown.test.txt.gz")
    parser.add_argument("--max_sentences", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=64,
                        help="The longest sentence read, in targets (words "
                             "+ 1); longer ones are left out.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rank_bounds", default="100,1000,10000",
                        help="Upper ranks of the word groups; the last "
                             "group runs to the vocabulary's end.")
    parser.add_argument("--out", default=None,
                        help="Markdown file for the table (replaced).")
    parser.add_argument("--quick", action="store_true",
                        help="Two untrained tiny models on 40 Brown "
                             "sentences, written under --out_dir.")
    parser.add_argument("--out_dir", default="/tmp/loss_by_frequency")
    args = parser.parse_args(argv)

    def fail(message):
        raise SystemExit(f"loss_by_frequency: {message}")

    _report.check_positive(fail, args,
                           ("max_sentences", "max_length", "batch_size"))
    try:
        args.rank_bounds = [int(bound) for bound in
                            args.rank_bounds.split(",") if bound.strip()]
    except ValueError:
        fail(f"--rank_bounds must be comma-separated integers, received "
             f"{args.rank_bounds!r}")
    if any(b <= a for a, b in zip([0] + args.rank_bounds, args.rank_bounds)):
        fail(f"--rank_bounds must increase from above 0, received "
             f"{args.rank_bounds}")
    if args.quick:
        args.run = quick_runs(args.out_dir)
        args.max_sentences, args.out = 40, os.path.join(
            args.out_dir, "loss_by_frequency.md")
    runs = []
    for spec in args.run:
        label, _, dirs = spec.partition(":")
        dirs = [d for d in dirs.split(",") if d]
        if not label or not dirs:
            fail(f"--run must be LABEL:DIR[,DIR...], received {spec!r}")
        runs.append((label, dirs))
    if len(runs) < 2:
        fail("give --run at least twice (the models to compare)")
    args.runs = runs
    return args


def quick_runs(out_dir):
    """Two untrained tiny models sharing a small Brown vocabulary."""
    vocabulary = data.WordVocabulary.build("data/brown.train.txt.gz",
                                           vocabulary_size=300)
    runs = []
    for label, preset in (("dense", "4xlstm_512"), ("moe", "tiny_moe")):
        run_dir = os.path.join(out_dir, label)
        model = models.MoELanguageModel.from_preset(
            preset, vocabulary_size=len(vocabulary), model_dim=16,
            padding_id=0, seed=1)
        model(keras.ops.zeros((1, 4), "int32"))
        model.save_to_preset(os.path.join(run_dir, "model"))
        vocabulary.save(run_dir)
        runs.append(f"{label}:{run_dir}")
    return runs


def read_targets(args, vocabulary):
    """(inputs, targets) [sentences, --max_length] int32 arrays, 0-padded,
    of the first --max_sentences sentences that fit --max_length, from
    the training pipeline (`<S>` and the words in, the words and `</S>`
    out; longer sentences left out, as in training and evaluation)."""
    # Batches of one sentence and one block of --max_sentences: the file's
    # first sentences, each padded to --max_length.
    sentences = data.language_model_dataset(
        args.text_files, vocabulary, 1, args.max_length,
        block_size=args.max_sentences, bucket_boundaries=[])
    pairs = list(sentences.take(args.max_sentences).as_numpy_iterator())
    if not pairs:
        raise SystemExit(f"loss_by_frequency: --text_files={args.text_files} "
                         f"holds no sentence of at most {args.max_length} "
                         "tokens")
    inputs, targets = (np.concatenate(arrays) for arrays in zip(*pairs))
    return inputs, targets


def token_losses(model, inputs, targets, batch_size):
    """The exact-softmax cross-entropy of every target, [sentences,
    length] (0 where the target is padding)."""
    losses = np.zeros(targets.shape, np.float64)
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        rows = len(batch)
        if rows < batch_size:  # one shape, one compilation
            batch = np.concatenate(
                [batch, np.zeros((batch_size - rows,) + batch.shape[1:],
                                 batch.dtype)])
        logits = np.asarray(model.predict_on_batch(batch),
                            np.float64)[:rows]
        top = logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        chosen = np.take_along_axis(
            logits, targets[start:start + rows, :, None], axis=-1)[..., 0]
        losses[start:start + rows] = log_norm - chosen
    return np.where(targets > 0, losses, 0.0)


def groups(targets, vocabulary, bounds):
    """[(name, mask of the targets in it)]: `</S>`, `<UNK>`, then words
    by rank (rank 1 is the most frequent training word)."""
    rank = targets - len(vocabulary.SPECIAL_TOKENS) + 1
    result = [("</S>", targets == vocabulary.eos_id),
              ("<UNK>", targets == vocabulary.unk_id)]
    last = len(vocabulary) - len(vocabulary.SPECIAL_TOKENS)
    lower = 1
    for upper in bounds + [last]:
        upper = min(upper, last)
        if upper < lower:
            break
        result.append((f"words ranked {lower:,}-{upper:,}",
                       (rank >= lower) & (rank <= upper)))
        lower = upper + 1
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.time()
    vocabulary = None
    for label, dirs in args.runs:
        for run_dir in dirs:
            try:
                found = data.WordVocabulary.load(run_dir)
            except (FileNotFoundError, ValueError) as error:
                raise SystemExit(f"loss_by_frequency: {error}")
            if vocabulary is None:
                vocabulary, first = found, run_dir
            elif found.tokens != vocabulary.tokens:
                raise SystemExit(
                    f"loss_by_frequency: {run_dir} has another vocabulary "
                    f"than {first}: the models must share one")
    try:
        inputs, targets = read_targets(args, vocabulary)
    except (OSError, ValueError) as error:  # missing or malformed text
        raise SystemExit(f"loss_by_frequency: {error}")
    named = groups(targets, vocabulary, args.rank_bounds)
    count = int((targets > 0).sum())
    losses = {}
    for label, dirs in args.runs:
        losses[label] = []
        for run_dir in dirs:
            try:
                model = models.MoELanguageModel.from_preset(
                    os.path.join(run_dir, "model"))
            except (OSError, ValueError) as error:
                raise SystemExit(f"loss_by_frequency: {run_dir}: {error}")
            losses[label].append(token_losses(model, inputs, targets,
                                              args.batch_size))
            print(f"{label} {run_dir}: cross-entropy "
                  f"{losses[label][-1].sum() / count:.4f}", flush=True)
    (base, _), *others = args.runs
    rows = []
    for name, mask in named + [("all targets", targets > 0)]:
        tokens = int(mask.sum())
        row = {"targets": name, "share": f"{tokens / count:.1%}"}
        for label, _ in args.runs:
            means = [run[mask].mean() if tokens else float("nan")
                     for run in losses[label]]
            row[label] = (f"{np.mean(means):.3f}" + (
                f" ({max(means) - min(means):.3f})" if len(means) > 1
                else ""))
        base_sums = [run[mask].sum() / count for run in losses[base]]
        for label, _ in others:
            sums = [run[mask].sum() / count for run in losses[label]]
            cell = f"{np.mean(sums) - np.mean(base_sums):+.4f}"
            if len(sums) == len(base_sums) > 1:  # paired run by run
                paired = np.subtract(sums, base_sums)
                cell += f" ({paired.max() - paired.min():.4f})"
            row[f"{label} minus {base}, share of all"] = cell
        rows.append(row)
    columns = list(rows[0])
    setting = (f"{count:,} targets of the first {len(inputs):,} sentences of "
               f"{args.text_files} of at most {args.max_length} targets; "
               f"vocabulary of {len(vocabulary):,} tokens; cross-entropy in "
               "nats per target, mean over each model's runs (spread = max "
               "- min); the last columns sum over the groups to the "
               "difference of the models' mean cross-entropy (spread of "
               "the differences of the runs paired in order, where the "
               "models have as many runs)")
    text = "\n\n".join([
        _report.header("loss_by_frequency.py", argv, time.time() - start,
                       setting),
        "Runs: " + "; ".join(f"{label}: {', '.join(dirs)}"
                             for label, dirs in args.runs),
        _report.rows_table(rows, columns, text_columns=1)])
    if args.out:
        _report.write_table(args.out, text)
    else:
        print(text)
    return rows


if __name__ == "__main__":
    main()
