"""MoE translation models against dense ones of the same compute per token.

Shazeer et al. 2017, §5.3 (Tables 2-4): GNMT-style models with a MoE
between encoder layers 2 and 3 and between decoder layers 1 and 2 beat
models without them. In miniature, on the corpus of
`scripts/train_translation.py` (by default the bundled LibreOffice help,
German to English), three models of its `small_*` presets:

- "MoE-16": `small_moe`, each MoE 16 experts 128 -> 256 -> 128, k = 4;
- "MoE-1-Wide": the same model with one expert 128 -> 1024 -> 128 in each
  MoE position: the MoE-16's feed-forward compute per token (k * 256 =
  1024 hidden units), no routing, 1/4 of its expert parameters;
- "no MoE": `small_baseline`, no feed-forward layers (less compute).

Each (model, seed) trains with the same vocabulary, steps, batches and
learning rate in its own resumable run directory under --work_dir, then
scores the test split: BLEU (sacrebleu, greedy decoding) and
teacher-forced perplexity. Each finished (model, seed) is a row in
<out_dir>/translation_rows/, so the same command resumes where it
stopped; the tables give mean, spread and per-seed values, and the
per-seed differences between the MoE and each other model.

    KERAS_BACKEND=jax python bench/translation_moe.py  # docs/translation.md
    python bench/translation_moe.py --quick --out_dir=/tmp/smoke
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import DATA_DIR  # noqa: E402
from _report import ROOT  # noqa: E402
from _report import cached  # noqa: E402
from _report import header  # noqa: E402
from _report import markdown  # noqa: E402
from _report import paired_differences  # noqa: E402
from _report import summarize  # noqa: E402
from _report import training_run  # noqa: E402
from _report import write_table  # noqa: E402



def _one_expert(hidden_dim):
    return {"num_experts": 1, "k": 1, "expert_hidden_dim": hidden_dim}


def _models(moe, baseline, wide_dim):
    """{label: (preset, overrides)}."""
    wide = _one_expert(wide_dim)
    return {"MoE-16": (moe, {}),
            "MoE-1-Wide": (moe, {"encoder_moe": wide, "decoder_moe": wide}),
            "no MoE": (baseline, {})}


MODELS = _models("small_moe", "small_baseline", 4 * 256)
# 4 and 8 experts of 32 hidden units, k = 2: one expert 64 wide.
QUICK_MODELS = _models("tiny_pyramid", "tiny_baseline", 2 * 32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: tiny models, a few steps, a "
                        "temporary --work_dir.")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--work_dir", default=os.path.join(
        ROOT, "runs", "translation_moe"),
        help="Run directories (checkpoints, models) per model and seed.")
    parser.add_argument("--train_files", default=os.path.join(
        DATA_DIR, "libreoffice.en-de.train"),
        help="Prefixes of line-aligned PREFIX.SOURCE / PREFIX.TARGET files.")
    parser.add_argument("--test_files", default=os.path.join(
        DATA_DIR, "libreoffice.en-de.test"))
    parser.add_argument("--source_language", default="de")
    parser.add_argument("--target_language", default="en")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"Comma-separated, of {', '.join(MODELS)}.")
    parser.add_argument("--train_steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--vocabulary_size", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--checkpoint_every", type=int, default=500)
    parser.add_argument("--test_sentences", type=int, default=0,
                        help="Score the first N test pairs; 0: all.")
    args = parser.parse_args(argv)
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.models = [label.strip() for label in args.models.split(",")]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    args.definitions = MODELS
    args.jit_compile = True
    args.bucket_boundaries = None  # the pipeline's default buckets
    if args.quick:
        args.definitions = QUICK_MODELS
        args.work_dir = tempfile.mkdtemp(prefix="translation_moe_")
        # One padded length: each new bucket shape would trace the train
        # step again, most of a 4-step run's time.
        args.bucket_boundaries = []
        # The small validation split: reading and shuffling the training
        # split would take longer than the smoke run.
        args.train_files = os.path.join(DATA_DIR, "ding.de-en.valid")
        args.test_files = os.path.join(DATA_DIR, "ding.de-en.test")
        args.train_steps, args.vocabulary_size, args.test_sentences = (
            4, 400, 16)
        args.checkpoint_every, args.jit_compile = 2, False
    return args


class Experiment:
    """The shared vocabulary and data, and one row per (model, seed)."""

    def __init__(self, args):
        from sgmoe import data
        from sgmoe import training

        self.args, self.data = args, data
        languages = (args.source_language, args.target_language)
        self.train_files = data.parallel_files(args.train_files, *languages)
        test_files = data.parallel_files(args.test_files, *languages)
        os.makedirs(args.work_dir, exist_ok=True)
        # Seed 1 for every model and seed: the models differ in their
        # weights and batches only.
        self.vocabulary = training.shared_vocabulary(
            args.work_dir, data.SubwordVocabulary,
            lambda: data.SubwordVocabulary.train(
                self.train_files[0] + self.train_files[1],
                vocabulary_size=args.vocabulary_size,
                character_coverage=0.9995, seed=1))
        self.test_pairs = data.read_sentence_pairs(
            *test_files, limit=args.test_sentences)
        self.test = data.translation_dataset(
            *test_files, self.vocabulary, args.batch_size, args.max_length,
            bucket_boundaries=args.bucket_boundaries)
        if args.test_sentences:
            self.test = self.test.take(
                -(-args.test_sentences // args.batch_size))

    def build(self, label, seed):
        from sgmoe import models
        from sgmoe.models.config_overrides import merge
        from sgmoe.models.translation_model_presets import PRESETS

        preset, overrides = self.args.definitions[label]
        keras.utils.set_random_seed(seed)  # the initial weights too
        model = models.MoETranslationModel(**merge(PRESETS[preset], dict(
            overrides, vocabulary_size=len(self.vocabulary),
            bos_id=self.vocabulary.bos_id, eos_id=self.vocabulary.eos_id,
            seed=seed)))
        model.compile(
            optimizer=keras.optimizers.Adam(self.args.learning_rate),
            metrics=[models.Perplexity(padding_id=0)],
            jit_compile=self.args.jit_compile)
        model.build()
        return model

    def train(self, label, model, seed):
        """Trains (resuming) in the run's directory; returns the minutes
        this invocation trained."""
        from sgmoe import training

        args = self.args
        run_dir = os.path.join(args.work_dir,
                               f"{label.replace(' ', '_')}-seed{seed}")
        run = training_run(model, run_dir, label, seed,
                           self.train_files[0] + self.train_files[1], args,
                           log_every=250)
        train = self.data.translation_dataset(
            *self.train_files, self.vocabulary, args.batch_size,
            args.max_length, shuffle=True, seed=seed, repeat=True,
            bucket_boundaries=args.bucket_boundaries)
        keras.utils.set_random_seed(seed)
        seconds = run.fit(train.skip)
        model.save_to_preset(os.path.join(run_dir, "model"),
                             vocabulary=self.vocabulary)
        training.unlock_model_dir(run_dir)
        return seconds / 60

    def row(self, label, seed):
        from sgmoe import evaluation
        from sgmoe import models

        model = self.build(label, seed)
        minutes = self.train(label, model, seed)
        perplexity = model.evaluate(self.test, verbose=0,
                                    return_dict=True)["perplexity"]
        hypotheses = evaluation.translate_lines(
            model, self.vocabulary,
            [source for source, _ in self.test_pairs], beam_width=1,
            jit_compile=self.args.jit_compile)
        bleu = evaluation.corpus_bleu(
            hypotheses, [target for _, target in self.test_pairs])
        counts = models.count_translation_parameters(model.get_config())
        return {"model": label, "seed": seed,
                "parameters": counts["total"],
                "expert parameters": counts["experts"],
                "train minutes": minutes,
                "test perplexity": float(perplexity),
                "test BLEU": bleu.score,
                "example": hypotheses[0],
                "signature": bleu.signature}


def write_outputs(args, experiment, rows, seconds, argv):
    sections = []
    for metric in ("test BLEU", "test perplexity"):
        summary = summarize(rows, ["model"], ["expert parameters",
                                              "train minutes"], metric=metric)
        for entry in summary:  # the same in every seed
            entry["expert parameters"] = int(entry["expert parameters"])
        table = markdown(summary, ["model"], ["expert parameters",
                                              "train minutes"], metric=metric)
        labels = [entry["model"] for entry in summary]
        lines = [paired_differences(rows, ["model"], (labels[0],), (other,),
                                    metric=metric) for other in labels[1:]]
        sections.append(table + "".join(f"\n\n{line}" for line in lines
                                         if line))
    source, target = args.source_language, args.target_language
    root = os.path.normpath(ROOT)

    def shown(path):  # in the repository: relative to its root
        path = os.path.normpath(path)
        return (os.path.relpath(path, root)
                if path.startswith(root + os.sep) else path)

    setting = (
        f"{shown(args.train_files)} ({source}->{target}; test "
        f"{shown(args.test_files)}, "
        f"{len(experiment.test_pairs)} pairs), {len(experiment.vocabulary)} "
        f"shared subword pieces, {args.train_steps} steps of "
        f"{args.batch_size} pairs, Adam {args.learning_rate:g}, seeds "
        f"{','.join(map(str, args.seeds))}; BLEU with greedy decoding, "
        f"sacrebleu {rows[0]['signature']}. Train minutes are those of the "
        "invocation that finished the run.")
    examples = "\n".join(
        f"- {row['model']}, seed {row['seed']}: {row['example']}"
        for row in rows if row["seed"] == args.seeds[0])
    text = (header("translation_moe.py", argv, seconds, setting) + "\n\n"
            + "\n\n".join(sections)
            + f"\n\nThe first test sentence, {experiment.test_pairs[0][0]!r} "
            f"(reference {experiment.test_pairs[0][1]!r}):\n\n" + examples)
    return write_table(os.path.join(args.out_dir, "translation.md"), text)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    start = time.time()
    try:
        experiment = Experiment(args)
        rows_dir = os.path.join(args.out_dir, "translation_rows")
        rows = [cached(rows_dir, f"{label.replace(' ', '_')}-seed{seed}",
                       lambda: experiment.row(label, seed))
                for seed in args.seeds for label in args.models]
        return write_outputs(args, experiment, rows, time.time() - start,
                             argv)
    finally:
        if args.quick:
            shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
