"""Smaller models from a trained MoE LM: Mixture-of-Students and expert
pruning (DeepSpeed-MoE, Rajbhandari et al. 2022), on the bundled Brown text.

- `--experiment=students` (MoS, §5 of the paper): a teacher (LSTM, MoE,
  LSTM) and a student one LSTM shallower (LSTM, MoE), the student trained
  (a) on the labels alone and (b) with `sgmoe.models.StudentDistillation`
  (KD weight `--alpha` at temperature `--temperature`, switched off after
  `--stop_fraction` of the steps: DeepSpeed's staged KD). Reports test
  perplexity and parameters (without embedding and softmax), mean and
  spread over `--seeds`.
- `--experiment=pruning`: a MoE-`--experts` LM, pruned with
  `sgmoe.models.prune_experts` to each of `--keep` experts (usage counted
  on `--usage_batches` validation batches), without fine-tuning, against
  a model of that many experts trained from scratch with the same steps.

Every model of a seed is trained with the same batches, steps and learning
rate. Finished (model, seed) rows are kept in `<out_dir>/<experiment>_rows/`
and skipped when the command runs again, so a stopped run resumes.

    python bench/students_and_pruning.py --experiment=students
    python bench/students_and_pruning.py --experiment=pruning
    python bench/students_and_pruning.py --quick --out_dir=/tmp/smoke
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import DATA_DIR  # noqa: E402
from _report import ROOT  # noqa: E402
from _report import cached  # noqa: E402
from _report import check_positive  # noqa: E402
from _report import header  # noqa: E402
from _report import markdown  # noqa: E402
from _report import paired_differences  # noqa: E402
from _report import summarize  # noqa: E402
from _report import write_table  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["students", "pruning"],
                        default="students")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: tiny width, a few steps.")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--train_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--model_dim", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--vocabulary_size", type=int, default=8000)
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--keep", default="16,8",
                        help="Experts kept by pruning (comma-separated).")
    parser.add_argument("--usage_batches", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--stop_fraction", type=float, default=0.75)
    parser.add_argument("--eval_batches", type=int, default=0,
                        help="Evaluate on the first N test batches; 0: all.")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.model_dim, args.vocabulary_size = 4, 8, 300
        args.experts, args.keep, args.seeds, args.k = 8, "4", "1", 2
        args.eval_batches, args.usage_batches = 2, 2
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.keep = [int(keep) for keep in args.keep.split(",")]
    if not 0 < args.stop_fraction <= 1:
        parser.error("--stop_fraction must be in (0, 1]")
    check_positive(parser.error, args,
                   ("train_steps", "batch_size", "model_dim", "experts", "k"))
    if any(not args.k <= keep <= args.experts for keep in args.keep):
        parser.error("--keep values must lie in [--k, --experts]")
    return args


class Run:
    """The data, vocabulary and model recipe shared by every model."""

    def __init__(self, args):
        from sgmoe import data

        self.args = args
        self.data = data
        self.vocabulary = data.WordVocabulary.build(
            os.path.join(DATA_DIR, "brown.train.txt.gz"),
            vocabulary_size=args.vocabulary_size)

    def dataset(self, split, seed=0):
        train = split == "train"
        dataset = self.data.language_model_dataset(
            os.path.join(DATA_DIR, f"brown.{split}.txt.gz"), self.vocabulary,
            self.args.batch_size, self.args.max_length, shuffle=train,
            seed=seed, repeat=train)
        if train:
            return dataset.take(self.args.train_steps)
        if split == "test" and self.args.eval_batches:
            return dataset.take(self.args.eval_batches)
        return dataset

    def language_model(self, seed, layer_types=("lstm", "moe", "lstm"),
                       num_experts=None):
        from sgmoe import models

        args = self.args
        keras.utils.set_random_seed(seed)  # the initial weights too
        return models.MoELanguageModel(
            vocabulary_size=len(self.vocabulary), model_dim=args.model_dim,
            layer_types=layer_types, padding_id=0, seed=seed,
            moe={"num_experts": num_experts or args.experts, "k": args.k,
                 "expert_hidden_dim": 2 * args.model_dim})

    def compile(self, model):
        from sgmoe import models

        model.compile(optimizer=keras.optimizers.Adam(self.args.learning_rate),
                      metrics=[models.Perplexity(padding_id=0)],
                      jit_compile=not self.args.quick)

    def train(self, model, seed):
        keras.utils.set_random_seed(seed)
        self.compile(model)
        model.fit(self.dataset("train", seed), epochs=1, verbose=0)
        return model

    def perplexity(self, model):
        if not getattr(model, "compiled", False):
            self.compile(model)
        return model.evaluate(self.dataset("test"), verbose=0,
                              return_dict=True)["perplexity"]


def parameters(model):
    """Parameters without the embedding and the softmax (as the paper)."""
    from sgmoe import models

    return models.count_parameters(model.get_config())


def students_rows(run, seed, rows_dir):
    from sgmoe import models

    args = run.args
    teacher = None

    def train_teacher():
        nonlocal teacher
        if teacher is None:
            teacher = run.train(run.language_model(seed), seed)
        return teacher

    def row(label, model):
        return {"model": label, "seed": seed,
                "test perplexity": run.perplexity(model),
                "parameters": parameters(model)}

    def distilled():
        student = run.language_model(seed, layer_types=("lstm", "moe"))
        distillation = models.StudentDistillation(
            student, train_teacher(), alpha=args.alpha,
            temperature=args.temperature,
            stop_distillation_step=max(1, int(args.stop_fraction
                                              * args.train_steps)))
        run.train(distillation, seed)
        return row("student, KD", student)

    return [
        cached(rows_dir, f"teacher-{seed}",
               lambda: row("teacher", train_teacher())),
        cached(rows_dir, f"student-{seed}", lambda: row(
            "student, labels only", run.train(run.language_model(
                seed, layer_types=("lstm", "moe")), seed))),
        cached(rows_dir, f"student_kd-{seed}", distilled),
    ]


def pruning_rows(run, seed, rows_dir):
    from sgmoe import models

    args = run.args
    full = None

    def trained_full():
        nonlocal full
        if full is None:
            full = run.train(run.language_model(seed), seed)
        return full

    def row(label, keep, model):
        return {"model": label, "experts": keep, "seed": seed,
                "test perplexity": run.perplexity(model),
                "parameters": parameters(model)}

    def pruned(keep):
        model = trained_full()
        usage = models.expert_usage(
            model, run.dataset("valid").take(args.usage_batches))
        return row("pruned", keep, models.prune_experts(model, keep, usage))

    rows = [cached(rows_dir, f"full-{seed}", lambda: row(
        "trained", args.experts, trained_full()))]
    for keep in args.keep:
        rows.append(cached(rows_dir, f"pruned_{keep}-{seed}",
                           lambda keep=keep: pruned(keep)))
        rows.append(cached(rows_dir, f"scratch_{keep}-{seed}",
                           lambda keep=keep: row(
                               "trained", keep, run.train(run.language_model(
                                   seed, num_experts=keep), seed))))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    start = time.time()
    run = Run(args)
    rows_dir = os.path.join(args.out_dir, f"{args.experiment}_rows")
    make_rows = (students_rows if args.experiment == "students"
                 else pruning_rows)
    rows = [row for seed in args.seeds
            for row in make_rows(run, seed, rows_dir)]
    keys = ["model"] if args.experiment == "students" else ["model",
                                                            "experts"]
    table = markdown(summarize(rows, keys), keys)
    if args.experiment == "students":
        pairs = [(("student, KD",), ("student, labels only",)),
                 (("student, KD",), ("teacher",))]
    else:
        pairs = [(("pruned", keep), ("trained", keep)) for keep in args.keep]
    lines = [paired_differences(rows, keys, *pair) for pair in pairs]
    table += "".join(f"\n\n{line}" for line in lines if line)
    setting = (
        f"Brown corpus, vocabulary {len(run.vocabulary)} words, model_dim "
        f"{args.model_dim}, {args.train_steps} steps of {args.batch_size} "
        f"sentences, Adam {args.learning_rate:g}, seeds {args.seeds}.")
    path = write_table(
        os.path.join(args.out_dir, f"{args.experiment}.md"),
        header("students_and_pruning.py", argv, time.time() - start, setting)
        + "\n\n" + table)
    return path


if __name__ == "__main__":
    main()
