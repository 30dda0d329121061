"""Smaller presets of a trained MoE language model, for bench/inference.py.

DeepSpeed-MoE (Rajbhandari et al. 2022) serves a MoE model faster by
making it smaller before serving. From a trained MoE LM preset (or a run
directory holding `model/`, as bench/paper_lm.py and scripts/train_lm.py
write), this writes next to each other in `--out_dir`:

- `pruned-<n>/` for each n of `--keep`: `sgmoe.models.prune_experts`
  keeps each MoE layer's n most used experts, counted over the first
  `--usage_batches` batches of the training files (not the validation
  set the benchmark scores), without fine-tuning;
- `student/` when `--student_steps` > 0: Mixture-of-Students, the teacher
  without its last LSTM layer, trained with
  `sgmoe.models.StudentDistillation` (KD weight `--alpha` at
  `--temperature`, switched off after `--stop_fraction` of the steps:
  DeepSpeed's staged KD) on the training files, from `--seed`.

Each preset carries the teacher's vocabulary and metadata naming how it
was made. A preset already in `--out_dir` is kept and not remade (delete
it to remake it). Then measure them beside the teacher:

    MOE=runs/paper_lm/capacity/MoE-32-seed1
    python bench/inference_variants.py --teacher=$MOE --out_dir=runs/variants
    python bench/inference.py --models=$MOE,runs/variants/pruned-16,...
    python bench/inference_variants.py --quick --out_dir=/tmp/smoke
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
from _report import check_positive  # noqa: E402

from inference import preset_directory  # noqa: E402
from inference import tiny_preset  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="",
                        help="The trained MoE LM: a preset directory or a "
                        "run directory holding `model/`.")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "runs",
                                                          "variants"))
    parser.add_argument("--keep", default="16,8",
                        help="Experts kept by pruning (comma-separated; "
                        "empty: no pruned preset).")
    parser.add_argument("--usage_batches", type=int, default=50)
    parser.add_argument("--train_files",
                        default=os.path.join(DATA_DIR, "brown.train.txt.gz"))
    parser.add_argument("--student_steps", type=int, default=1000,
                        help="Training steps of the student; 0: none.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--stop_fraction", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="A tiny untrained teacher saved first, 8 "
                        "student steps; a smoke run.")
    args = parser.parse_args(argv)
    if args.quick:
        args.keep, args.usage_batches, args.student_steps = "2", 2, 8
        args.batch_size, args.learning_rate = 4, 0.02
    try:
        args.keep = [int(n) for n in args.keep.split(",") if n]
    except ValueError:
        parser.error(f"--keep must be comma-separated integers, received "
                     f"{args.keep!r}")
    check_positive(parser.error, args,
                   ("usage_batches", "batch_size", "max_length"))
    if args.student_steps < 0:
        parser.error("--student_steps must be 0 or more")
    if not 0 < args.stop_fraction <= 1:
        parser.error("--stop_fraction must be in (0, 1]")
    if not args.quick and not args.teacher:
        parser.error("--teacher is required (or --quick)")
    return args


def student_config(teacher):
    """The teacher's config without its last LSTM layer, computing its
    logits in training (no sampled softmax)."""
    config = teacher.get_config()
    layer_types = list(config["layer_types"])
    if "lstm" not in layer_types[1:]:
        raise SystemExit(
            f"inference_variants: the teacher's layers {layer_types} have "
            "no LSTM layer after the first to leave out")
    last = len(layer_types) - 1 - layer_types[::-1].index("lstm")
    del layer_types[last]
    moe_per_layer = config.get("moe_per_layer")
    if moe_per_layer is not None and "moe" in config["layer_types"][last:]:
        raise SystemExit("inference_variants: a teacher with per-layer MoE "
                         "arguments after its last LSTM is not supported")
    return dict(config, layer_types=layer_types, num_sampled=None)


def train_student(args, teacher, vocabulary):
    from sgmoe import data
    from sgmoe import models

    keras.utils.set_random_seed(args.seed)  # the initial weights too
    student = models.MoELanguageModel.from_config(
        dict(student_config(teacher), seed=args.seed))
    distillation = models.StudentDistillation(
        student, teacher, alpha=args.alpha, temperature=args.temperature,
        stop_distillation_step=max(1, int(args.stop_fraction
                                          * args.student_steps)))
    distillation.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        jit_compile=not args.quick)
    batches = data.language_model_dataset(
        args.train_files, vocabulary, args.batch_size, args.max_length,
        shuffle=True, seed=args.seed, repeat=True)
    distillation.fit(batches.take(args.student_steps), epochs=1, verbose=0)
    return student


def write(directory, model, vocabulary, made_by):
    model.save_to_preset(directory, vocabulary=vocabulary,
                         metadata={"made_by": made_by})
    print(f"wrote {directory}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    from sgmoe import data
    from sgmoe import models

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    start = time.time()
    teacher_path = (tiny_preset(os.path.join(args.out_dir, "teacher"),
                                args.train_files)
                    if args.quick else args.teacher)
    teacher = models.MoELanguageModel.from_preset(
        preset_directory(teacher_path))
    vocabulary = teacher.vocabulary
    if vocabulary is None:
        raise SystemExit(f"inference_variants: {teacher_path} holds no "
                         "vocabulary")
    source = {"teacher": os.path.abspath(teacher_path),
              "train_files": args.train_files}
    written = []
    for keep in args.keep:
        directory = os.path.join(args.out_dir, f"pruned-{keep}")
        if not os.path.isdir(directory):
            usage = models.expert_usage(teacher, data.language_model_dataset(
                args.train_files, vocabulary, args.batch_size,
                args.max_length).take(args.usage_batches))
            write(directory, models.prune_experts(teacher, keep, usage),
                  vocabulary, dict(source, pruned_to=keep,
                                   usage_batches=args.usage_batches))
        written.append(directory)
    if args.student_steps:
        directory = os.path.join(args.out_dir, "student")
        if not os.path.isdir(directory):
            write(directory, train_student(args, teacher, vocabulary),
                  vocabulary, dict(
                      source, distilled_steps=args.student_steps,
                      alpha=args.alpha, temperature=args.temperature,
                      stop_fraction=args.stop_fraction, seed=args.seed,
                      batch_size=args.batch_size,
                      learning_rate=args.learning_rate))
        written.append(directory)
    print(f"inference_variants: {len(written)} presets in "
          f"{time.time() - start:.0f} s")
    return written


if __name__ == "__main__":
    keras.config.disable_interactive_logging()
    main()
