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
    preset="small_moe", train_steps=600, batch_size=32, learning_rate=2e-3,
    log_every=100, checkpoint_every=100)
flags.DEFINE_string(
    "train_files", os.path.join(DATA_DIR, "brown.train.txt.gz"),
    "Comma-separated globs of tokenized training text, one sentence per "
    "line (.gz read as gzip).")
flags.DEFINE_string(
    "eval_files", os.path.join(DATA_DIR, "brown.valid.txt.gz"),
    "Comma-separated globs of tokenized evaluation text.")
flags.DEFINE_integer("max_length", 48,
                     "Longest sentence in tokens (with <S>); longer ones are "
                     "left out.")
flags.DEFINE_integer("vocabulary_size", 8000,
                     "Largest vocabulary (special tokens included); 0: no "
                     "limit.")
flags.DEFINE_integer("min_count", 1,
                     "Words seen fewer times in training map to <UNK>.")
flags.DEFINE_integer("num_experts", None, "Overrides the preset's experts.")
flags.DEFINE_integer("k", None, "Overrides the preset's experts per token.")
flags.DEFINE_integer("model_dim", None, "Overrides the preset's width.")
flags.DEFINE_integer("expert_hidden_dim", None,
                     "Overrides the preset's expert hidden units.")


def fail(message):
    sys.exit(f"train_lm: {message}")


def vocabulary_for(data):
    """The model directory's vocabulary, or one built from the training text."""
    return script_flags.shared_vocabulary(
        data.WordVocabulary, lambda: data.WordVocabulary.build(
            FLAGS.train_files, max_size=FLAGS.vocabulary_size or None,
            min_count=FLAGS.min_count))


def mean_tokens_per_sentence(data):
    """Words + </S> per training sentence, for the words/s figures."""
    words = sentences = 0
    for path in data.expand_file_patterns(FLAGS.train_files):
        for line in data.read_text_lines(path):
            if line.strip():
                words += len(line.split()) + 1
                sentences += 1
    return words / max(sentences, 1)


def build_model(models, vocabulary_size):
    import keras

    overrides = {name: getattr(FLAGS, name) for name in (
        "num_experts", "k", "model_dim", "expert_hidden_dim")
        if getattr(FLAGS, name) is not None}
    model = models.MoELanguageModel.from_preset(
        FLAGS.preset, vocabulary_size=vocabulary_size, padding_id=0,
        seed=FLAGS.seed, **overrides)
    model.compile(optimizer=script_flags.make_optimizer(),
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=FLAGS.jit_compile)
    model(keras.ops.zeros((1, 8), dtype="int32"))  # builds the weights
    return model


def main(argv):
    del argv
    script_flags.check_training_flags(fail, positive=("max_length",))
    # Keras warns whenever an evaluation dataset of unknown length ends,
    # which is how every evaluation here ends.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    import keras

    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    from sgmoe import data
    from sgmoe import models
    from sgmoe import training

    keras.utils.set_random_seed(FLAGS.seed)
    try:  # first: --multi_host starts the processes
        scope = script_flags.distribution_scope()
    except ValueError as error:
        fail(error)
    try:
        vocabulary = vocabulary_for(data)
        tokens_per_step = FLAGS.batch_size * mean_tokens_per_sentence(data)
        eval_data = data.language_model_dataset(
            FLAGS.eval_files, vocabulary, FLAGS.batch_size, FLAGS.max_length)
        if FLAGS.mesh:  # a mesh splits every batch evenly
            eval_data = data.pad_batches(eval_data, FLAGS.batch_size)
    except data.DataError as error:
        fail(error)
    with scope:
        model = build_model(models, len(vocabulary))
    eval_callbacks = script_flags.evaluation_callbacks()
    print(f"{FLAGS.preset}: vocabulary {len(vocabulary)} words, backend "
          f"{keras.backend.backend()}, {model.count_params():,} parameters")

    run = training.TrainingRun(
        model, train_steps=FLAGS.train_steps, log_every=FLAGS.log_every,
        model_dir=FLAGS.model_dir, checkpoint_every=FLAGS.checkpoint_every,
        tokens_per_step=tokens_per_step)
    if run.state:
        print(f"resumed from {run.state.path} at step {run.first_step}")
    else:
        untrained = model.evaluate(eval_data, verbose=0, return_dict=True,
                                   callbacks=eval_callbacks)["perplexity"]

    # One endless, seeded stream: batch i is the same in every run, so a
    # resumed run skips the batches its checkpoint had consumed.
    try:
        seconds = run.fit(lambda skip_batches: data.language_model_dataset(
            FLAGS.train_files, vocabulary, FLAGS.batch_size, FLAGS.max_length,
            shuffle=True, seed=FLAGS.seed, repeat=True,
            skip_batches=skip_batches))
    except training.NonFiniteLossError as error:
        fail(error)
    perplexity = model.evaluate(eval_data, verbose=0, return_dict=True,
                                callbacks=eval_callbacks)["perplexity"]
    if run.remaining_steps:
        steps = run.remaining_steps
        print(f"trained {steps} steps in {seconds:.0f}s "
              f"({steps * tokens_per_step / seconds:.0f} words/s)")
    for name, layer in training.find_moe_layers(model).items():
        load = keras.ops.convert_to_numpy(layer.expert_load)
        print(f"{name}: load max/mean {load.max() / load.mean():.2f} on the "
              f"last evaluation batch")
    if FLAGS.model_dir:
        script_flags.save_model(model)
    if run.state:
        print(f"validation perplexity: {perplexity:.1f}")
    else:
        print(f"validation perplexity: {perplexity:.1f} "
              f"(untrained: {untrained:.1f})")


if __name__ == "__main__":
    app.run(main)
