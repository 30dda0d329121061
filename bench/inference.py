"""Inference speed of language models against their quality (issue 19).

DeepSpeed-MoE (Rajbhandari et al. 2022) served MoE models faster than
dense models of the same quality. This benchmark measures, for each
trained language model it is given (preset directories written by
scripts/train_lm.py or bench/paper_lm.py), its validation perplexity,
its parameters and ops/timestep, the latency per generated token at
batch 1 and the throughput at `--batch` sentences, with
`MoELanguageModel.generate` (greedy, XLA-compiled, recurrent-state
cache). The first model is the reference of the ratio columns. Give it a
MoE model and dense models of about the same validation perplexity (a
dense model wider or deeper until it matches) to answer DeepSpeed's
question; pruned (`sgmoe.models.prune_experts`) and distilled
(`sgmoe.models.StudentDistillation`) models are presets like any other.

    RUNS=runs/paper_lm/capacity
    python bench/inference.py --models=$RUNS/MoE-32-seed1,$RUNS/4xLSTM-seed1 \\
        --eval_files=data/manuals.valid.txt.gz
    python bench/inference.py --quick --out_dir=/tmp/smoke
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import DATA_DIR  # noqa: E402
from _report import ROOT  # noqa: E402
from _report import check_positive  # noqa: E402
from _report import header  # noqa: E402
from _report import print_row  # noqa: E402
from _report import rows_table  # noqa: E402
from _report import write_table  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="",
                        help="Comma-separated preset directories (or run "
                        "directories holding `model/`), the reference "
                        "first.")
    parser.add_argument("--labels", default="",
                        help="Comma-separated names of the models; default: "
                        "the directory names.")
    parser.add_argument("--eval_files",
                        default=os.path.join(DATA_DIR, "brown.valid.txt.gz"))
    parser.add_argument("--eval_batches", type=int, default=0,
                        help="Perplexity on the first N batches; 0: all.")
    parser.add_argument("--prompt_length", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=56)
    parser.add_argument("--batch", type=int, default=64,
                        help="The throughput batch (latency is at 1).")
    parser.add_argument("--repeats", type=int, default=5,
                        help="Timed calls per setting (median reported).")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--quick", action="store_true",
                        help="Two tiny untrained models (MoE and dense) "
                        "saved as presets first; a smoke run.")
    args = parser.parse_args(argv)
    check_positive(parser.error, args,
                   ("prompt_length", "new_tokens", "batch", "repeats"))
    if not args.quick and not args.models:
        parser.error("--models is required (or --quick)")
    return args


def quick_models(args):
    """Two tiny presets with a vocabulary of the bundled text."""
    args.eval_batches, args.repeats, args.new_tokens = 2, 2, 8
    args.batch = 4
    return [tiny_preset(os.path.join(args.out_dir, "inference_models", label),
                        args.eval_files, layer_types)
            for label, layer_types in (("moe", ("lstm", "moe", "lstm")),
                                       ("dense", ("lstm", "lstm")))]


def tiny_preset(directory, text_files, layer_types=("lstm", "moe", "lstm")):
    """Saves an untrained width-16 LM (4 experts, k = 2) with a 200-word
    vocabulary of `text_files` as a preset in `directory`; returns it."""
    from sgmoe import data
    from sgmoe import models

    vocabulary = data.WordVocabulary.build(text_files, vocabulary_size=200)
    model = models.MoELanguageModel(
        vocabulary_size=len(vocabulary), model_dim=16,
        layer_types=layer_types, padding_id=0, seed=1,
        moe={"num_experts": 4, "k": 2, "expert_hidden_dim": 32})
    model.build((None, None))
    model.save_to_preset(directory, vocabulary=vocabulary)
    return directory


def preset_directory(path):
    model = os.path.join(path, "model")
    return model if os.path.isdir(model) else path


def prompts(vocabulary, files, count, length):
    """The first `count` sentences of `files` with at least `length`
    tokens (`<S>` included), cut to `length`; repeated if too few."""
    from sgmoe import data

    found = []
    for path in data.expand_file_patterns(files):
        for line in data.read_text_lines(path):
            ids = [vocabulary.bos_id] + [vocabulary.token_to_id(word)
                                         for word in line.split()]
            if len(ids) >= length:
                found.append(ids[:length])
            if len(found) == count:
                return np.array(found, "int32")
    if not found:
        raise SystemExit(f"inference: no sentence of {length} tokens in "
                         f"{files}")
    return np.array([found[i % len(found)] for i in range(count)], "int32")


def timed_generation(model, prompt_ids, max_length, repeats):
    """Median seconds per call and the steps generated per call."""
    model.generate(prompt_ids, max_length=max_length)  # compiles
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = model.generate(prompt_ids, max_length=max_length)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), output.shape[1] - prompt_ids.shape[1]


def measure(args, label, path):
    from sgmoe import data
    from sgmoe import evaluation
    from sgmoe import models

    model = models.MoELanguageModel.from_preset(preset_directory(path))
    vocabulary = model.vocabulary
    if vocabulary is None:
        raise SystemExit(f"inference: {path} holds no vocabulary")
    model.compile(metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=True)
    batches = data.language_model_dataset(args.eval_files, vocabulary, 32,
                                          400)
    if args.eval_batches:
        batches = batches.take(args.eval_batches)
    max_length = args.prompt_length + args.new_tokens
    row = {
        "model": label,
        "validation perplexity": evaluation.evaluate_perplexity(model,
                                                                batches),
        "parameters": models.count_parameters(model.get_config()),
        "ops/timestep": models.ops_per_timestep(model.get_config()),
    }
    for batch, column in ((1, "µs/token, batch 1"),
                          (args.batch, f"tokens/s, batch {args.batch}")):
        ids = prompts(vocabulary, args.eval_files, batch, args.prompt_length)
        seconds, steps = timed_generation(model, ids, max_length,
                                          args.repeats)
        row[column] = (1e6 * seconds / steps if batch == 1
                       else batch * steps / seconds)
    print_row(row)
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    start = time.time()
    paths = quick_models(args) if args.quick else args.models.split(",")
    labels = (args.labels.split(",") if args.labels else
              [os.path.basename(os.path.normpath(path)) for path in paths])
    if len(labels) != len(paths):
        raise SystemExit(f"inference: {len(labels)} --labels for "
                         f"{len(paths)} --models")
    rows = [measure(args, label, path) for label, path in zip(labels, paths)]
    latency = "µs/token, batch 1"
    throughput = f"tokens/s, batch {args.batch}"
    columns = ["model", "validation perplexity", "parameters",
               "ops/timestep", latency, "speed-up, batch 1", throughput,
               f"speed-up, batch {args.batch}"]
    for row in rows:
        row["speed-up, batch 1"] = rows[0][latency] / row[latency]
        row[f"speed-up, batch {args.batch}"] = (row[throughput]
                                                / rows[0][throughput])
    setting = (f"greedy generation of {args.new_tokens} tokens after "
               f"{args.prompt_length}-token prompts from {args.eval_files}, "
               f"XLA-compiled, median of {args.repeats} calls; speed-ups "
               f"against {labels[0]}.")
    return write_table(
        os.path.join(args.out_dir, "inference.md"),
        header("inference.py", argv, time.time() - start, setting)
        + "\n\n" + rows_table(rows, columns))


if __name__ == "__main__":
    keras.config.disable_interactive_logging()
    main()
