"""Trains a GNMT-style MoE translation model (Shazeer et al. 2017, §5.3).

A thin script over the library: `sgmoe.data` learns a shared SentencePiece
vocabulary and batches the parallel text, `MoETranslationModel.from_preset`
builds the model, `sgmoe.training` trains, checkpoints and monitors it, and
`sgmoe.evaluation.corpus_bleu` (sacrebleu) scores the translations of the
test set. With no flags it trains the `small_moe` preset from German to
English on the bundled LibreOffice help (docs/translation.md: about 12
minutes on a 2-core CPU) and prints BLEU on its test split.

  python scripts/train_translation.py
  python scripts/train_translation.py --model_dir=/tmp/de_en  # again: resumes
  python scripts/train_translation.py --preset=moe_512_h \\
      --train_files="$WMT14/europarl-v7.fr-en,$WMT14/commoncrawl.fr-en,$WMT14/news-commentary-v9.fr-en" \\
      --eval_files="$WMT14/newstest2013" --test_files="$WMT14/newstest2014" \\
      --eval_every=10000 --source_language=en \\
      --target_language=fr --vocabulary_size=32000 --max_length=100 \\
      --schedule=inverse_sqrt --warmup_steps=2000 --hold_steps=8000

Files are named by prefix: PREFIX.SOURCE and PREFIX.TARGET (or with .gz)
are the two line-aligned sides. With --model_dir, checkpoints are written
every --checkpoint_every steps and the same command resumes from the last
one; the vocabulary (subwords.model), the TensorBoard event files
(`tensorboard --logdir MODEL_DIR/logs`) and the final model
(MODEL_DIR/model, read by scripts/evaluate.py) go there too.
"""

import os
import sys
import time

from absl import app
from absl import flags

# TensorFlow's C++ notices (XLA ignoring assert ops, CPU features, oneDNN
# falling back to Eigen) are not for the user of a script; --verbose shows
# them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, _SCRIPTS_DIR)

import console  # noqa: E402
import training_flags  # noqa: E402

DATA_DIR = console.data_dir()
BUNDLED_TRAIN_FILES = os.path.join(DATA_DIR, "libreoffice.en-de.train")
BUNDLED_TEST_FILES = os.path.join(DATA_DIR, "libreoffice.en-de.test")

FLAGS = flags.FLAGS
training_flags.define_training_flags(
    preset="small_moe", train_steps=3000, batch_size=64, learning_rate=5e-3,
    log_every=250, checkpoint_every=500)
# --help lists the shared flags with the script's own.
flags.adopt_module_key_flags(training_flags)
flags.DEFINE_string(
    "train_files", BUNDLED_TRAIN_FILES,
    "Comma-separated prefixes (globs allowed) of line-aligned training "
    "files PREFIX.SOURCE and PREFIX.TARGET (.gz read as gzip).")
flags.DEFINE_string(
    "eval_files", os.path.join(DATA_DIR, "libreoffice.en-de.valid"),
    "Prefixes of the validation files, read when --eval_every > 0.")
flags.DEFINE_string(
    "test_files", None,
    "Prefixes of the test files, translated at the end and scored with "
    "BLEU; empty: none. Default: the bundled test split when --train_files "
    "is the bundled training split, else none.")
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
flags.DEFINE_integer("test_sentences", 0,
                     "Score only the first N test pairs; 0: all.")



def fail(message):
    sys.exit(f"train_translation: {console.one_line(message)}")


def check_flags():
    training_flags.check_training_flags(
        fail, positive=("vocabulary_size", "max_length", "beam_width"))
    if FLAGS.test_sentences < 0:
        fail(f"--test_sentences must be >= 0, received "
             f"{FLAGS.test_sentences}")
    if FLAGS.source_language == FLAGS.target_language:
        fail(f"--source_language and --target_language are both "
             f"{FLAGS.source_language!r}")
    training_flags.load_libraries(fail)
    from sgmoe import models

    training_flags.check_preset(fail, models.MoETranslationModel)


def load_data():
    """The training files, the shared vocabulary, the training target
    pieces per step, the training stream, the validation batches and the
    test pairs; a data error ends the script."""
    from sgmoe import data
    from sgmoe import training

    text_input = training_flags.text_input()
    training_flags.print_skipped_lines()
    try:
        train_sources, train_targets = data.parallel_files(
            FLAGS.train_files, FLAGS.source_language, FLAGS.target_language)
        data.check_parallel_files(train_sources, train_targets,
                                  **text_input)
        eval_sources = eval_targets = None
        if FLAGS.eval_every:
            eval_sources, eval_targets = data.parallel_files(
                FLAGS.eval_files, FLAGS.source_language,
                FLAGS.target_language)
            data.check_parallel_files(eval_sources, eval_targets,
                                      **text_input)
        test_files = FLAGS.test_files
        if test_files is None:
            test_files = (BUNDLED_TEST_FILES
                          if FLAGS.train_files == BUNDLED_TRAIN_FILES else "")
        pairs = []
        if test_files:
            # Read now: a bad test file ends the script before anything
            # is written to --model_dir.
            pairs = data.read_sentence_pairs(
                *data.parallel_files(test_files, FLAGS.source_language,
                                     FLAGS.target_language),
                limit=FLAGS.test_sentences, **text_input)
        vocabulary = training.shared_vocabulary(
            FLAGS.model_dir, data.SubwordVocabulary,
            lambda: data.SubwordVocabulary.train(
                train_sources + train_targets,
                vocabulary_size=FLAGS.vocabulary_size,
                character_coverage=0.9995,  # rare characters: bytes
                seed=FLAGS.seed, **text_input))
        tokens_per_step = FLAGS.batch_size * data.mean_tokens_per_sentence(
            train_targets, vocabulary, max_sentences=2000, **text_input)
        # One endless, seeded stream: batch i is the same in every run, so
        # a resumed run skips the batches its checkpoint had consumed.
        train_data = data.translation_dataset(
            train_sources, train_targets, vocabulary, FLAGS.batch_size,
            FLAGS.max_length, shuffle=True, seed=FLAGS.seed, repeat=True,
            block_size=training_flags.shuffle_block(train_sources),
            **text_input)
        validation_data = None
        if FLAGS.eval_every:
            validation_data = data.translation_dataset(
                eval_sources, eval_targets, vocabulary, FLAGS.batch_size,
                FLAGS.max_length, **text_input)
    except data.DataError as error:
        fail(training_flags.data_error_message(error))
    except ValueError as error:
        fail(error)
    return (train_sources + train_targets, vocabulary, tokens_per_step,
            train_data, validation_data, pairs)


def model_config(vocabulary):
    """The model's constructor arguments: --preset's, updated by
    --hparams; the vocabulary (None: a placeholder for the check before
    it is built) and --seed decide the rest."""
    from sgmoe import models

    bos_id, eos_id = (1, 2) if vocabulary is None else (vocabulary.bos_id,
                                                        vocabulary.eos_id)
    return training_flags.model_config(
        fail, models.MoETranslationModel,
        {"vocabulary_size": (FLAGS.vocabulary_size if vocabulary is None
                             else len(vocabulary)),
         "bos_id": bos_id, "eos_id": eos_id, "seed": FLAGS.seed})


def build_model(vocabulary):
    from sgmoe import models

    model = training_flags.build_model(fail, models.MoETranslationModel,
                                       model_config(vocabulary))
    # The perplexity metric is the cross-entropy's alone; Keras's loss
    # adds the MoE layers' auxiliary losses in training.
    model.compile(optimizer=training_flags.make_optimizer(),
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=FLAGS.jit_compile)
    model.build()
    return model


def test_bleu(model, vocabulary, pairs):
    """Translates the test pairs' sources; prints and returns BLEU."""
    from sgmoe import evaluation

    start = time.time()
    hypotheses = evaluation.translate_lines(
        model, vocabulary, [source for source, _ in pairs],
        beam_width=FLAGS.beam_width, jit_compile=FLAGS.jit_compile)
    score = evaluation.corpus_bleu(hypotheses,
                                   [target for _, target in pairs])
    print(f"translated {len(pairs)} test pairs in "
          f"{time.time() - start:.0f}s, "
          f"{'greedy' if FLAGS.beam_width == 1 else 'beam'} decoding: "
          f"{score.text} ({score.signature})")
    return score


def main(argv):
    del argv
    check_flags()
    scope = training_flags.start_run(fail)  # first: --multi_host
    from sgmoe import models

    training_flags.check_model_config(fail, models.MoETranslationModel,
                                      model_config(None))
    training_flags.claim_model_dir(fail)
    import keras

    (train_files, vocabulary, tokens_per_step, train_data, validation_data,
     pairs) = load_data()
    setup = training_flags.run_setup(
        train_files=train_files, vocabulary=vocabulary,
        data=dict(training_flags.text_input_setup(),
                  languages=[FLAGS.source_language, FLAGS.target_language],
                  max_length=FLAGS.max_length),
        model=training_flags.model_setup())
    with scope:
        model = build_model(vocabulary)
    print(f"{FLAGS.preset}: {FLAGS.source_language}->"
          f"{FLAGS.target_language}, vocabulary {len(vocabulary)} pieces, "
          f"backend {keras.backend.backend()}, {model.count_params():,} "
          "parameters")

    run = training_flags.training_run(fail, model, tokens_per_step, setup,
                                      validation_data)
    if run.state:
        print(f"resumed from {run.state.path} at step {run.first_step}")
    seconds = training_flags.fit(fail, run, train_data.skip)
    training_flags.print_training_time(run, seconds, tokens_per_step,
                                       "target pieces")
    training_flags.save_model(fail, model, vocabulary, setup)
    if pairs:
        score = test_bleu(model, vocabulary, pairs)
        # In TensorBoard next to the training curves.
        run.write_scalars({"bleu": score.score}, run_name="test")
        print(f"test BLEU: {score.score:.2f}")


def run():
    """Parses `sys.argv` and runs `main`: `python scripts/train_translation.py`
    and the console script `sgmoe-train-translation`."""
    console.help_for_module(__name__)
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
