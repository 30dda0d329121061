"""MoE translation model against the same model without MoE layers.

Shazeer et al. 2017, §5.3 (Tables 2-4): GNMT-style models with a MoE
between encoder layers 2 and 3 and between decoder layers 1 and 2 beat the
same architecture without them at about the same computation per step. In
miniature, on the bundled German-English Ding sentences: the `small_moe`
preset (two MoEs of 16 experts, k = 4) and `small_baseline` (the same
model, no MoE layers), trained with the same steps, batches, learning rate
and seed, then scored with corpus BLEU through sacrebleu on the test split
(greedy decoding). The models also report parameters, training time, and
teacher-forced test perplexity (exp of the mean token cross-entropy), which
moves long before BLEU does.

    python bench/translation_moe.py            # writes docs/translation.md
    python bench/translation_moe.py --quick --out_dir=/tmp/smoke
"""

import argparse
import datetime
import math
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA_DIR = os.path.join(ROOT, "data")
MODELS = [("no MoE", "small_baseline"), ("MoE, 16 experts, k = 4",
                                         "small_moe")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: tiny models, a few steps.")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--train_steps", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--vocabulary_size", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--test_sentences", type=int, default=0,
                        help="Score the first N test pairs; 0: all.")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.models = MODELS
    args.jit_compile = True
    args.train_prefix = os.path.join(DATA_DIR, "ding.de-en.train")
    args.bucket_boundaries = None  # the pipeline's default buckets
    if args.quick:
        # One padded length: each new bucket shape would trace the train
        # step again, most of a 4-step run's time.
        args.bucket_boundaries = []
        # The small validation split: reading and shuffling the training
        # split would take longer than the smoke run.
        args.train_prefix = os.path.join(DATA_DIR, "ding.de-en.valid")
        args.train_steps, args.vocabulary_size, args.test_sentences = 4, 400, 16
        args.models = [("no MoE", "tiny_baseline"),
                       ("MoE, 8 + 4 experts", "tiny_pyramid")]
        args.jit_compile = False
    return args


def train_and_score(args, label, preset, vocabulary, test_pairs):
    from sgmoe import data
    from sgmoe import evaluation
    from sgmoe import models

    keras.utils.set_random_seed(args.seed)
    model = models.MoETranslationModel.from_preset(
        preset, vocabulary_size=len(vocabulary), bos_id=vocabulary.bos_id,
        eos_id=vocabulary.eos_id, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  jit_compile=args.jit_compile)
    train_prefix = args.train_prefix
    train = data.translation_dataset(
        f"{train_prefix}.de.gz", f"{train_prefix}.en.gz", vocabulary,
        args.batch_size, args.max_length, shuffle=True, seed=args.seed,
        repeat=True, bucket_boundaries=args.bucket_boundaries)
    start = time.time()
    history = model.fit(train.take(args.train_steps), epochs=1, verbose=0,
                        shuffle=False)
    seconds = time.time() - start
    test_prefix = os.path.join(DATA_DIR, "ding.de-en.test")
    test = data.translation_dataset(
        f"{test_prefix}.de.gz", f"{test_prefix}.en.gz", vocabulary,
        args.batch_size, args.max_length,
        bucket_boundaries=args.bucket_boundaries)
    if args.test_sentences:
        test = test.take(1)
    cross_entropy = model.evaluate(test, verbose=0)
    hypotheses = evaluation.translate_lines(
        model, vocabulary, [source for source, _ in test_pairs],
        beam_width=1, jit_compile=args.jit_compile)
    bleu = evaluation.corpus_bleu(hypotheses,
                                  [target for _, target in test_pairs])
    counts = models.count_translation_parameters(model.get_config())
    row = {"model": label, "preset": preset,
           "parameters": counts["total"],
           "expert parameters": counts["experts"],
           "train minutes": seconds / 60,
           "final train loss": history.history["loss"][-1],
           "test perplexity": math.exp(cross_entropy),
           "test BLEU": bleu.score}
    print(", ".join(f"{key}: {value}" for key, value in row.items()),
          f"({bleu.text})", flush=True)
    row["signature"] = bleu.signature
    return row


def format_value(value):
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    from sgmoe import data

    start = time.time()
    train_prefix = args.train_prefix
    vocabulary = data.SubwordVocabulary.train(
        [f"{train_prefix}.de.gz", f"{train_prefix}.en.gz"],
        vocabulary_size=args.vocabulary_size, character_coverage=0.9995,
        seed=args.seed)
    test_pairs = data.read_sentence_pairs(
        *data.parallel_files(os.path.join(DATA_DIR, "ding.de-en.test"), "de",
                             "en"), limit=args.test_sentences)
    rows = [train_and_score(args, label, preset, vocabulary, test_pairs)
            for label, preset in args.models]
    columns = ["model", "preset", "parameters", "expert parameters",
               "train minutes", "final train loss", "test perplexity",
               "test BLEU"]
    table = "\n".join(
        ["| " + " | ".join(columns) + " |",
         "|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) - 2)) + "|"]
        + ["| " + " | ".join(format_value(row[column]) for column in columns)
           + " |" for row in rows])
    command = " ".join(["python bench/translation_moe.py"] + argv)
    header = (
        f"`{command}` ({datetime.date.today()}, "
        f"{(time.time() - start) / 60:.1f} min): {os.cpu_count()} CPU cores "
        f"({platform.machine()}), Keras {keras.__version__} on "
        f"{keras.backend.backend()}; Ding de->en, {len(vocabulary)} shared "
        f"subword pieces, {args.train_steps} steps of {args.batch_size} "
        f"pairs, Adam {args.learning_rate:g}; BLEU on {len(test_pairs)} test "
        f"pairs, greedy decoding, sacrebleu {rows[0]['signature']}.")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "translation.md")
    with open(path, "w") as file:
        file.write(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)
    return path


if __name__ == "__main__":
    main()
