"""Trains a GNMT-style MoE translation model (Shazeer et al. 2017, §5.3).

A thin script over the library: `sgmoe.data` learns a shared SentencePiece
vocabulary and batches the parallel text, `MoETranslationModel.from_preset`
builds the model, `sgmoe.training` trains, checkpoints and monitors it, and
`sgmoe.training.corpus_bleu` (sacrebleu) scores the translations of the
evaluation set. With no flags it trains the `small_moe` preset on the
bundled German-English Ding sentences for a few minutes on a 2-core CPU and
prints BLEU on their validation split.

  python scripts/train_translation.py
  python scripts/train_translation.py --model_dir=/tmp/de_en  # again: resumes
  python scripts/train_translation.py --preset=moe_512_h \\
      --train_files="$WMT14/europarl-v7.fr-en,$WMT14/commoncrawl.fr-en,$WMT14/news-commentary-v9.fr-en" \\
      --eval_files="$WMT14/newstest2013" --source_language=en \\
      --target_language=fr --vocabulary_size=32000 --max_length=100

Files are named by prefix: PREFIX.SOURCE and PREFIX.TARGET (or with .gz)
are the two line-aligned sides. With --model_dir, checkpoints are written
every --checkpoint_every steps and the same command resumes from the last
one; the vocabulary (subwords.model), the TensorBoard event files
(`tensorboard --logdir MODEL_DIR/logs`) and the final model
(MODEL_DIR/model, read by scripts/evaluate.py) go there too.
"""

import itertools
import os
import sys
import time
import warnings

from absl import app
from absl import flags

# TensorFlow's C++ notices (XLA ignoring assert ops, CPU features) are not
# for the user of a training script.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sgmoe.training import script_flags  # noqa: E402

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "data")

FLAGS = flags.FLAGS
script_flags.define_training_flags(
    preset="small_moe", train_steps=800, batch_size=64, learning_rate=5e-3,
    log_every=100, checkpoint_every=100)
flags.DEFINE_string(
    "train_files", os.path.join(DATA_DIR, "ding.de-en.train"),
    "Comma-separated prefixes (globs allowed) of line-aligned training "
    "files PREFIX.SOURCE and PREFIX.TARGET (.gz read as gzip).")
flags.DEFINE_string(
    "eval_files", os.path.join(DATA_DIR, "ding.de-en.valid"),
    "Prefixes of the evaluation files, scored with BLEU.")
flags.DEFINE_string("source_language", "de", "Suffix of the source files.")
flags.DEFINE_string("target_language", "en", "Suffix of the target files.")
flags.DEFINE_integer("vocabulary_size", 2000,
                     "Subword pieces shared by both languages (special and "
                     "byte pieces included).")
flags.DEFINE_integer("max_length", 64,
                     "Longest training source or target in pieces; longer "
                     "pairs are left out.")
flags.DEFINE_integer("beam_width", 1,
                     "Beam width for the BLEU evaluation (1: greedy).")
flags.DEFINE_integer("eval_sentences", 0,
                     "Score only the first N evaluation pairs; 0: all.")


def fail(message):
    sys.exit(f"train_translation: {message}")


def vocabulary_for(data, train_sources, train_targets):
    """The model directory's vocabulary, or one learned from the training
    text of both languages."""
    return script_flags.shared_vocabulary(
        data.SubwordVocabulary, lambda: data.SubwordVocabulary.train(
            train_sources + train_targets, vocab_size=FLAGS.vocabulary_size,
            character_coverage=0.9995, seed=FLAGS.seed))  # rare ones: bytes


def mean_target_pieces(data, vocabulary, targets, sample=2000):
    """Pieces + </s> per training target, from the first lines, for the
    words/s figures (target pieces per second)."""
    lines = itertools.islice(
        (line for path in targets for line in data.read_text_lines(path)
         if line.strip()), sample)
    pieces = vocabulary.tokenize(list(lines)).row_lengths().numpy()
    return float(pieces.mean()) + 1


def bleu(training, model, vocabulary, pairs):
    hypotheses = training.translate_lines(
        model, vocabulary, [source for source, _ in pairs],
        beam_width=FLAGS.beam_width, jit_compile=FLAGS.jit_compile)
    return training.corpus_bleu(hypotheses, [target for _, target in pairs])


def main(argv):
    del argv
    script_flags.check_training_flags(
        fail, positive=("vocabulary_size", "max_length", "beam_width"))
    if FLAGS.eval_sentences < 0:
        fail(f"--eval_sentences must be >= 0, received "
             f"{FLAGS.eval_sentences}")
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    import keras

    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    from sgmoe import data
    from sgmoe import distribute
    from sgmoe import models
    from sgmoe import training

    keras.utils.set_random_seed(FLAGS.seed)
    try:  # first: --multi_host starts the processes
        scope = script_flags.distribution_scope()
    except ValueError as error:
        fail(error)
    try:
        train_sources, train_targets = data.parallel_files(
            FLAGS.train_files, FLAGS.source_language, FLAGS.target_language)
        eval_sources, eval_targets = data.parallel_files(
            FLAGS.eval_files, FLAGS.source_language, FLAGS.target_language)
        data.check_parallel_files(train_sources, train_targets)
        data.check_parallel_files(eval_sources, eval_targets)
        vocabulary = vocabulary_for(data, train_sources, train_targets)
        pairs = data.read_sentence_pairs(eval_sources, eval_targets,
                                         limit=FLAGS.eval_sentences)
        tokens_per_step = FLAGS.batch_size * mean_target_pieces(
            data, vocabulary, train_targets)
    except ValueError as error:  # DataError included
        fail(error)

    def make_dataset(skip_batches):
        return data.translation_dataset(
            train_sources, train_targets, vocabulary, FLAGS.batch_size,
            FLAGS.max_length, shuffle=True, seed=FLAGS.seed, repeat=True,
            skip_batches=skip_batches)

    with scope:
        model = models.MoETranslationModel.from_preset(
            FLAGS.preset, vocabulary_size=len(vocabulary),
            start_id=vocabulary.bos_id, end_id=vocabulary.eos_id,
            seed=FLAGS.seed)
        model.compile(optimizer=script_flags.make_optimizer(),
                      jit_compile=FLAGS.jit_compile)
        model.build()
    print(f"{FLAGS.preset}: {FLAGS.source_language}->"
          f"{FLAGS.target_language}, vocabulary {len(vocabulary)} pieces, "
          f"backend {keras.backend.backend()}, {model.count_params():,} "
          "parameters")

    run = training.TrainingRun(
        model, train_steps=FLAGS.train_steps, log_every=FLAGS.log_every,
        model_dir=FLAGS.model_dir, checkpoint_every=FLAGS.checkpoint_every,
        tokens_per_step=tokens_per_step)
    if run.state:
        print(f"resumed from {run.state.path} at step {run.first_step}")
    try:
        seconds = run.fit(make_dataset)
    except training.NonFiniteLossError as error:
        fail(error)
    if run.remaining_steps:
        steps = run.remaining_steps
        print(f"trained {steps} steps in {seconds:.0f}s "
              f"({steps * tokens_per_step / seconds:.0f} target pieces/s)")
    if FLAGS.model_dir:
        script_flags.save_model(model)
    start = time.time()
    score = bleu(training, model, vocabulary, pairs)
    print(f"translated {len(pairs)} evaluation pairs in "
          f"{time.time() - start:.0f}s, "
          f"{'greedy' if FLAGS.beam_width == 1 else 'beam'} decoding: "
          f"{score.text} ({score.signature})")
    # Next to the training curves in TensorBoard; one writer.
    if FLAGS.model_dir and distribute.is_primary_process():
        import tensorflow as tf

        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        writer = tf.summary.create_file_writer(
            os.path.join(FLAGS.model_dir, "logs", "validation"))
        with writer.as_default():
            tf.summary.scalar("bleu", score.score, step=step)
        writer.close()
    print(f"validation BLEU: {score.score:.2f}")


if __name__ == "__main__":
    app.run(main)
