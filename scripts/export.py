"""Exports a trained model as a TensorFlow SavedModel for serving.

Reads MODEL_DIR/model (written by scripts/train_lm.py or
scripts/train_translation.py) and writes --export_dir with the endpoints
of `sgmoe.models.export_for_serving`: `serve` (int32 ids -> logits);
for a language model `generate` (int32 prompts -> greedy ids) and
`generate_text` (strings -> strings; load with `import tensorflow_text`);
for a translation model `translate` (int32 sources -> greedy target ids)
and `translate_text` (German strings -> English strings, for the
default run). It runs on the TensorFlow backend, whatever KERAS_BACKEND
says: SavedModels are TensorFlow graphs.
A process that serves it needs TensorFlow only, not sgmoe:

  python scripts/train_lm.py --model_dir=/tmp/lm
  python scripts/export.py --model_dir=/tmp/lm --export_dir=/tmp/lm_serving
  python -c "import tensorflow as tf, tensorflow_text; \\
      m = tf.saved_model.load('/tmp/lm_serving'); \\
      print(m.generate_text(tf.constant(['the president said']), 20))"
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # --verbose: "0"
os.environ["KERAS_BACKEND"] = "tensorflow"
_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, _SCRIPTS_DIR)

import console  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None,
                    "The --model_dir of a finished training run.")
flags.DEFINE_string("export_dir", None,
                    "The SavedModel directory to write (must not exist).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's native log lines.")
flags.mark_flags_as_required(["model_dir", "export_dir"])


def fail(message):
    sys.exit(f"export: {console.one_line(message)}")


def main(argv):
    del argv
    if os.path.exists(FLAGS.export_dir):
        fail(f"--export_dir={FLAGS.export_dir} exists; choose a new "
             "directory (nothing is overwritten)")
    if FLAGS.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:  # the SavedModel writer's INFO lines
        logging.set_verbosity(logging.WARNING)
    console.plain_warnings()
    console.import_quietly(verbose=FLAGS.verbose)
    from sgmoe import evaluation
    from sgmoe import models

    model_path = os.path.join(FLAGS.model_dir, "model")
    try:
        model_class = evaluation.saved_model_class(model_path)
        model = model_class.from_preset(model_path)
        models.export_for_serving(model, FLAGS.export_dir)
    except FileNotFoundError as error:
        fail(f"{error} (train with --model_dir first; the model is written "
             "when training ends)")
    except (ValueError, OSError) as error:
        fail(error)
    print(f"wrote {FLAGS.export_dir}")


def run():
    """Parses `sys.argv` and runs `main`: `python scripts/export.py` and
    the console script `sgmoe-export`."""
    console.help_for_module(__name__)
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
