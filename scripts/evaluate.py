"""Evaluates a trained model: test perplexity (LM) or BLEU (translation).

Reads the final model and the vocabulary that scripts/train_lm.py or
scripts/train_translation.py wrote to --model_dir (MODEL_DIR/model and
MODEL_DIR/vocabulary.txt or MODEL_DIR/subwords.model). A language model is
scored by its perplexity on --eval_files (tokenized text, one sentence per
line, or a paragraph per line with --split_sentences; the exact softmax
over the whole vocabulary, padding excluded). A
translation model translates the source side of --eval_files (file
prefixes, as in training) with beam search and is scored with corpus BLEU
through sacrebleu against the target side.

  python scripts/train_lm.py --model_dir=/tmp/lm
  python scripts/evaluate.py --model_dir=/tmp/lm   # bundled Brown test split

  python scripts/train_translation.py --model_dir=/tmp/de_en
  python scripts/evaluate.py --model_dir=/tmp/de_en  # bundled LibreOffice test split
  python scripts/evaluate.py --model_dir=/tmp/wmt_en_fr \\
      --eval_files="$WMT14/newstest2014" --source_language=en \\
      --target_language=fr --output_file=/tmp/newstest2014.hyp.fr
"""

import os
import sys
import tempfile
import time
import warnings

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # --verbose: "0"
_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, _SCRIPTS_DIR)

import console  # noqa: E402
import training_flags  # noqa: E402

DATA_DIR = console.data_dir()
DEFAULT_EVAL_FILES = {
    "MoELanguageModel": os.path.join(DATA_DIR, "brown.test.txt.gz"),
    "MoETranslationModel": os.path.join(DATA_DIR, "libreoffice.en-de.test"),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None,
                    "The --model_dir of a finished training run.")
flags.DEFINE_string(
    "eval_files", None,
    "Language model: comma-separated globs of tokenized text. Translation: "
    "comma-separated prefixes of PREFIX.SOURCE / PREFIX.TARGET files. "
    "Default: the bundled test split (Brown, or LibreOffice de-en).")
flags.DEFINE_string("source_language", "de", "Suffix of the source files.")
flags.DEFINE_string("target_language", "en", "Suffix of the target files.")
flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
flags.DEFINE_integer("max_length", 400,
                     "Language model: sentences longer than this many tokens "
                     "are left out (reported). Translation: sources are cut "
                     "to this many pieces.")
flags.DEFINE_integer("beam_width", 4, "Beam width (1: greedy decoding).")
flags.DEFINE_float("length_penalty", 0.6,
                   "GNMT length penalty alpha of beam search.")
flags.DEFINE_bool("jit_compile", True, "Compile the model with XLA.")
flags.DEFINE_string("output_file", None,
                    "Translation: also write the translations here, one per "
                    "line. An existing file is replaced, in one step once "
                    "every sentence is translated; its directory must "
                    "exist and be writable (checked before the model is "
                    "loaded).")
training_flags.define_backend_flags()
training_flags.define_text_input_flags()
flags.DEFINE_bool(
    "split_sentences", False,
    "Language model: split each line of --eval_files (a paragraph or a "
    "document) into sentences before scoring, as train_lm.py "
    "--split_sentences does.")
# --help lists --max_line_length and --on_malformed with the rest.
flags.adopt_module_key_flags(training_flags)
flags.mark_flag_as_required("model_dir")


def fail(message):
    sys.exit(f"evaluate: {console.one_line(message)}")


def check_output_file(path):
    """Fails unless `path` can become a file (its real path is returned).

    The directory must exist and take a new file: a scratch file is
    created and removed there, as `write_lines_atomically` will.
    """
    path = os.path.realpath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        fail(f"--output_file={FLAGS.output_file} is a directory")
    if not os.path.isdir(directory):
        fail(f"--output_file={FLAGS.output_file}: no such directory "
             f"{directory}")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".evaluate-"):
            pass
    except OSError as error:
        fail(f"--output_file={FLAGS.output_file}: cannot write to "
             f"{directory} ({error.strerror or error})")
    return path


def load_model_class(model_path):
    from sgmoe import evaluation

    try:
        return evaluation.saved_model_class(model_path)
    except FileNotFoundError as error:
        fail(f"{error} (train with --model_dir first; the model is written "
             "when training ends)")
    except ValueError as error:
        fail(error)


def evaluate_language_model(model_path, eval_files):
    from sgmoe import data
    from sgmoe import evaluation
    from sgmoe import models

    vocabulary = data.WordVocabulary.load(FLAGS.model_dir)
    text_input = training_flags.text_input()
    dataset = data.language_model_dataset(
        eval_files, vocabulary, FLAGS.batch_size, FLAGS.max_length,
        split_sentences=FLAGS.split_sentences, **text_input)
    lines = (line for path in data.expand_file_patterns(eval_files)
             for line in data.read_text_lines(path, **text_input))
    sentences = ((sentence for line in lines
                  for sentence in data.split_into_sentences(line))
                 if FLAGS.split_sentences else lines)
    longer = sum(1 for sentence in sentences
                 if len(sentence.split()) + 1 > FLAGS.max_length)
    model = models.MoELanguageModel.from_preset(model_path)
    model.compile(metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=FLAGS.jit_compile)
    try:
        perplexity = evaluation.evaluate_perplexity(model, dataset)
    except data.DataError as error:
        if longer:
            fail(f"{error} (--max_length={FLAGS.max_length} left out "
                 f"{longer} sentences)")
        raise
    if longer:
        print(f"left out {longer} sentences longer than --max_length="
              f"{FLAGS.max_length}")
    print(f"test perplexity: {perplexity:.2f}")


def evaluate_translation(model_path, eval_files, output_file):
    from sgmoe import _files
    from sgmoe import data
    from sgmoe import evaluation
    from sgmoe import models

    vocabulary = data.SubwordVocabulary.load(FLAGS.model_dir)
    sources, targets = data.parallel_files(
        eval_files, FLAGS.source_language, FLAGS.target_language)
    pairs = data.read_sentence_pairs(sources, targets,
                                     **training_flags.text_input())
    model = models.MoETranslationModel.from_preset(model_path)
    start = time.time()
    hypotheses = evaluation.translate_lines(
        model, vocabulary, [source for source, _ in pairs],
        batch_size=FLAGS.batch_size, beam_width=FLAGS.beam_width,
        length_penalty=FLAGS.length_penalty,
        max_source_length=FLAGS.max_length, jit_compile=FLAGS.jit_compile)
    score = evaluation.corpus_bleu(hypotheses,
                                   [target for _, target in pairs])
    if output_file:
        _files.write_text_atomically(
            output_file, "".join(line + "\n" for line in hypotheses))
    print(f"translated {len(pairs)} pairs in {time.time() - start:.0f}s "
          f"(beam width {FLAGS.beam_width}): {score.text} "
          f"({score.signature})")
    print(f"test BLEU: {score.score:.2f}")


def main(argv):
    del argv
    for name in ("batch_size", "max_length", "beam_width",
                 "max_line_length"):
        if getattr(FLAGS, name) < 1:
            fail(f"--{name} must be positive, received {getattr(FLAGS, name)}")
    output_file = FLAGS.output_file and check_output_file(FLAGS.output_file)
    training_flags.load_libraries(fail)
    model_path = os.path.join(FLAGS.model_dir, "model")
    model_class = load_model_class(model_path)
    eval_files = FLAGS.eval_files or DEFAULT_EVAL_FILES[model_class.__name__]
    language_model = model_class.__name__ == "MoELanguageModel"
    if language_model and output_file:
        fail("--output_file is for translation models; a language model "
             "writes no text")
    if not language_model and FLAGS.split_sentences:
        fail("--split_sentences is for language models; translation pairs "
             "are aligned line by line")
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    training_flags.print_skipped_lines()
    from sgmoe import data

    try:
        if language_model:
            evaluate_language_model(model_path, eval_files)
        else:
            evaluate_translation(model_path, eval_files, output_file)
    except data.DataError as error:
        fail(training_flags.data_error_message(error))
    except (ValueError, OSError) as error:
        fail(error)


def run():
    """Parses `sys.argv` and runs `main`: `python scripts/evaluate.py`
    and the console script `sgmoe-evaluate`."""
    console.help_for_module(__name__)
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
