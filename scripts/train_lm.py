"""Trains an LSTM-MoE language model (Shazeer et al. 2017, Appendix C.1).

A thin script over the library: `sgmoe.data` reads and batches the text,
`sgmoe.models.MoELanguageModel.from_preset` builds the model, and
`sgmoe.training` checkpoints, logs and monitors it. With no flags it trains
the `small_moe` preset (16 experts, k = 4) on the bundled Brown corpus for a
few minutes on a 2-core CPU and prints the validation perplexity.

  python scripts/train_lm.py
  python scripts/train_lm.py --model_dir=/tmp/lm   # again: resumes
  python scripts/train_lm.py --preset=moe_256_h \\
      --train_files="$LM1B/training-monolingual.tokenized.shuffled/news.en-*" \\
      --eval_files="$LM1B/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050" \\
      --min_count=3 --vocabulary_size=0 --optimizer=factored_adam

With --model_dir, checkpoints are written every --checkpoint_every steps and
the same command resumes from the last one; the vocabulary and TensorBoard
event files (`tensorboard --logdir MODEL_DIR/logs`) go there too.
"""

import os
import sys
import time
import warnings

from absl import app
from absl import flags

# TensorFlow's C++ notices (XLA ignoring assert ops, CPU features) are not
# for the user of a training script.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "data")

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "small_moe",
                    "MoELanguageModel preset (see MoELanguageModel.presets()).")
flags.DEFINE_string(
    "train_files", os.path.join(DATA_DIR, "brown.train.txt.gz"),
    "Comma-separated globs of tokenized training text, one sentence per "
    "line (.gz read as gzip).")
flags.DEFINE_string(
    "eval_files", os.path.join(DATA_DIR, "brown.valid.txt.gz"),
    "Comma-separated globs of tokenized evaluation text.")
flags.DEFINE_string(
    "model_dir", None,
    "Checkpoints, vocabulary and TensorBoard logs; a run started again with "
    "the same MODEL_DIR resumes from its last checkpoint. None: no files.")
flags.DEFINE_integer("train_steps", 600, "Optimizer steps in all.")
flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
flags.DEFINE_integer("max_length", 48,
                     "Longest sentence in tokens (with <S>); longer ones are "
                     "left out.")
flags.DEFINE_integer("vocabulary_size", 8000,
                     "Largest vocabulary (special tokens included); 0: no "
                     "limit.")
flags.DEFINE_integer("min_count", 1,
                     "Words seen fewer times in training map to <UNK>.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "factored_adam"],
                  "adam: keras Adam; factored_adam: the paper's Appendix D "
                  "optimizer (sgmoe.optimizers.FactoredAdam).")
flags.DEFINE_integer("seed", 1, "Seed of weights, gating noise and shuffling.")
flags.DEFINE_bool("mixed_precision", False,
                  "Train under the mixed_bfloat16 policy (routers stay "
                  "float32).")
flags.DEFINE_integer("log_every", 100,
                     "Steps between progress lines (one Keras epoch); must "
                     "divide --train_steps and --checkpoint_every.")
flags.DEFINE_integer("checkpoint_every", 100,
                     "Steps between checkpoints (with --model_dir).")
flags.DEFINE_integer("num_experts", None, "Overrides the preset's experts.")
flags.DEFINE_integer("k", None, "Overrides the preset's experts per token.")
flags.DEFINE_integer("model_dim", None, "Overrides the preset's width.")
flags.DEFINE_integer("expert_hidden_dim", None,
                     "Overrides the preset's expert hidden units.")
flags.DEFINE_bool("jit_compile", True, "Compile the train step with XLA.")


def fail(message):
    sys.exit(f"train_lm: {message}")


def check_flags():
    for name in ("train_steps", "batch_size", "max_length", "log_every",
                 "checkpoint_every"):
        if getattr(FLAGS, name) < 1:
            fail(f"--{name} must be positive, received {getattr(FLAGS, name)}")
    if FLAGS.train_steps % FLAGS.log_every:
        fail(f"--log_every={FLAGS.log_every} must divide "
             f"--train_steps={FLAGS.train_steps}")
    if FLAGS.model_dir and FLAGS.checkpoint_every % FLAGS.log_every:
        fail(f"--log_every={FLAGS.log_every} must divide "
             f"--checkpoint_every={FLAGS.checkpoint_every}")


def vocabulary_for(data):
    """The model directory's vocabulary, or one built from the training text."""
    saved = FLAGS.model_dir and os.path.isfile(
        os.path.join(FLAGS.model_dir, "vocabulary.txt"))
    if saved:
        return data.WordVocabulary.load(FLAGS.model_dir)
    vocabulary = data.WordVocabulary.build(
        FLAGS.train_files, max_size=FLAGS.vocabulary_size or None,
        min_count=FLAGS.min_count)
    if FLAGS.model_dir:
        os.makedirs(FLAGS.model_dir, exist_ok=True)
        vocabulary.save(FLAGS.model_dir)
    return vocabulary


def mean_tokens_per_sentence(data):
    """Words + </S> per training sentence, for the words/s figures."""
    words = sentences = 0
    for path in data.expand_file_patterns(FLAGS.train_files):
        for line in data.read_text_lines(path):
            if line.strip():
                words += len(line.split()) + 1
                sentences += 1
    return words / max(sentences, 1)


def build_model(models, optimizers, vocabulary_size):
    import keras

    overrides = {name: getattr(FLAGS, name) for name in (
        "num_experts", "k", "model_dim", "expert_hidden_dim")
        if getattr(FLAGS, name) is not None}
    model = models.MoELanguageModel.from_preset(
        FLAGS.preset, vocabulary_size=vocabulary_size, padding_id=0,
        seed=FLAGS.seed, **overrides)
    if FLAGS.optimizer == "factored_adam":
        optimizer = optimizers.FactoredAdam(FLAGS.learning_rate)
    else:
        optimizer = keras.optimizers.Adam(FLAGS.learning_rate)
    model.compile(optimizer=optimizer,
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=FLAGS.jit_compile)
    model(keras.ops.zeros((1, 8), dtype="int32"))  # builds the weights
    return model


def main(argv):
    del argv
    check_flags()
    # Keras warns whenever an evaluation dataset of unknown length ends,
    # which is how every evaluation here ends.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    import keras

    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    from sgmoe import data
    from sgmoe import models
    from sgmoe import optimizers
    from sgmoe import training

    keras.utils.set_random_seed(FLAGS.seed)
    try:
        vocabulary = vocabulary_for(data)
        tokens_per_step = FLAGS.batch_size * mean_tokens_per_sentence(data)
        eval_data = data.language_model_dataset(
            FLAGS.eval_files, vocabulary, FLAGS.batch_size, FLAGS.max_length)
    except data.DataError as error:
        fail(error)
    model = build_model(models, optimizers, len(vocabulary))
    print(f"{FLAGS.preset}: vocabulary {len(vocabulary)} words, backend "
          f"{keras.backend.backend()}, {model.count_params():,} parameters")

    callbacks = [training.StopOnNonFiniteLoss(),
                 training.ProgressLogger(FLAGS.log_every, tokens_per_step)]
    state = None
    if FLAGS.model_dir:
        checkpointer = training.Checkpointer(
            FLAGS.model_dir, checkpoint_every=FLAGS.checkpoint_every)
        state = checkpointer.restore(model)
        callbacks += [
            checkpointer,
            training.MoETensorBoard(os.path.join(FLAGS.model_dir, "logs"),
                                    update_freq=FLAGS.log_every,
                                    tokens_per_step=tokens_per_step)]
    first_step = state.step if state else 0
    if state:
        print(f"resumed from {state.path} at step {first_step}")
    else:
        untrained = model.evaluate(eval_data, verbose=0,
                                   return_dict=True)["perplexity"]

    # One endless, seeded stream: batch i is the same in every run, so a
    # resumed run skips the batches its checkpoint had consumed.
    train_data = data.language_model_dataset(
        FLAGS.train_files, vocabulary, FLAGS.batch_size, FLAGS.max_length,
        shuffle=True, seed=FLAGS.seed, repeat=True,
        skip_batches=state.data_position if state else 0)
    epochs = FLAGS.train_steps // FLAGS.log_every
    start = time.time()
    try:
        model.fit(train_data, steps_per_epoch=FLAGS.log_every, epochs=epochs,
                  initial_epoch=(state.initial_epoch(FLAGS.log_every)
                                 if state else 0),
                  shuffle=False, verbose=0, callbacks=callbacks)
    except training.NonFiniteLossError as error:
        fail(error)
    seconds = time.time() - start
    steps = FLAGS.train_steps - first_step
    perplexity = model.evaluate(eval_data, verbose=0,
                                return_dict=True)["perplexity"]
    if steps:
        print(f"trained {steps} steps in {seconds:.0f}s "
              f"({steps * tokens_per_step / seconds:.0f} words/s)")
    for name, layer in training.find_moe_layers(model).items():
        load = keras.ops.convert_to_numpy(layer.expert_load)
        print(f"{name}: load max/mean {load.max() / load.mean():.2f} on the "
              f"last evaluation batch")
    if state:
        print(f"validation perplexity: {perplexity:.1f}")
    else:
        print(f"validation perplexity: {perplexity:.1f} "
              f"(untrained: {untrained:.1f})")


if __name__ == "__main__":
    app.run(main)
