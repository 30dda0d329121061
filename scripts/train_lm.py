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
      --min_count=3 --vocabulary_size=0 --optimizer=factored_adam \\
      --schedule=inverse_sqrt --warmup_steps=1000

With --model_dir, checkpoints are written every --checkpoint_every steps and
the same command resumes from the last one; the vocabulary and TensorBoard
event files (`tensorboard --logdir MODEL_DIR/logs`) go there too.
"""

import os
import sys

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

FLAGS = flags.FLAGS
training_flags.define_training_flags(
    preset="small_moe", train_steps=600, batch_size=32, learning_rate=2e-3,
    log_every=100, checkpoint_every=100)
# --help lists the shared flags with the script's own.
flags.adopt_module_key_flags(training_flags)
flags.DEFINE_string(
    "train_files", os.path.join(DATA_DIR, "brown.train.txt.gz"),
    "Comma-separated globs of tokenized training text, one sentence per "
    "line (.gz read as gzip; a paragraph per line: --split_sentences).")
flags.DEFINE_string(
    "eval_files", os.path.join(DATA_DIR, "brown.valid.txt.gz"),
    "Comma-separated globs of tokenized evaluation text.")
flags.DEFINE_integer("max_length", 48,
                     "Longest sentence in tokens (with <S>); longer ones are "
                     "left out.")
flags.DEFINE_bool(
    "split_sentences", False,
    "Split each line of --train_files and --eval_files (a paragraph or a "
    "document) into sentences before tokenizing (sgmoe.data."
    "split_into_sentences, English rules): every sentence is an example "
    "and is counted in the vocabulary; --max_length applies to each "
    "sentence, --max_line_length to the line.")
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
    sys.exit(f"train_lm: {console.one_line(message)}")


def check_flags():
    training_flags.check_training_flags(fail, positive=("max_length",))
    if FLAGS.vocabulary_size < 0:
        fail(f"--vocabulary_size must be >= 0 (0: no limit), received "
             f"{FLAGS.vocabulary_size}")
    if FLAGS.min_count < 1:
        fail(f"--min_count must be positive, received {FLAGS.min_count}")
    training_flags.load_libraries(fail)
    from sgmoe import models

    training_flags.check_preset(fail, models.MoELanguageModel)


def text_input():
    """The library arguments of --max_line_length, --on_malformed and
    --split_sentences, for every reader of the text."""
    return dict(training_flags.text_input(),
                split_sentences=FLAGS.split_sentences)


def build_vocabulary():
    from sgmoe import data

    return data.WordVocabulary.build(
        FLAGS.train_files, vocabulary_size=FLAGS.vocabulary_size or None,
        min_count=FLAGS.min_count, **text_input())


def model_overrides():
    """The model flags' changes to the preset: the MoE's key by key."""
    overrides = {}
    if FLAGS.model_dim is not None:
        overrides["model_dim"] = FLAGS.model_dim
    moe = {name: getattr(FLAGS, name) for name in (
        "num_experts", "k", "expert_hidden_dim")
        if getattr(FLAGS, name) is not None}
    if moe:
        overrides["moe"] = moe
    return overrides


def model_config(vocabulary_size):
    """The model's constructor arguments: --preset's (a name or a
    save_to_preset directory), updated by the flags and --hparams."""
    from sgmoe import models

    return training_flags.model_config(
        fail, models.MoELanguageModel,
        {"vocabulary_size": vocabulary_size, "padding_id": 0,
         "seed": FLAGS.seed},
        model_overrides())


def build_model(vocabulary_size):
    import keras

    from sgmoe import models

    model = training_flags.build_model(fail, models.MoELanguageModel,
                                       model_config(vocabulary_size))
    model.compile(optimizer=training_flags.make_optimizer(),
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=FLAGS.jit_compile)
    model(keras.ops.zeros((1, 8), dtype="int32"))  # builds the weights
    return model


def load_data():
    """The vocabulary, the training words per step, the training stream
    and the evaluation batches; a data error ends the script."""
    from sgmoe import data
    from sgmoe import training

    training_flags.print_skipped_lines()
    try:
        vocabulary = training.shared_vocabulary(
            FLAGS.model_dir, data.WordVocabulary, build_vocabulary)
        tokens_per_step = FLAGS.batch_size * data.mean_tokens_per_sentence(
            FLAGS.train_files, **text_input())
        # One endless, seeded stream: batch i is the same in every run, so
        # a resumed run skips the batches its checkpoint had consumed.
        train_data = data.language_model_dataset(
            FLAGS.train_files, vocabulary, FLAGS.batch_size,
            FLAGS.max_length, shuffle=True, seed=FLAGS.seed, repeat=True,
            block_size=training_flags.shuffle_block(
                data.expand_file_patterns(FLAGS.train_files)),
            **text_input())
        eval_data = data.language_model_dataset(
            FLAGS.eval_files, vocabulary, FLAGS.batch_size, FLAGS.max_length,
            **text_input())
    except data.DataError as error:
        fail(training_flags.data_error_message(error))
    if not any(True for _ in eval_data.take(1)):
        fail(f"--eval_files={FLAGS.eval_files}: no sentence of at most "
             f"--max_length={FLAGS.max_length} tokens")
    if FLAGS.mesh:  # a mesh splits every batch evenly
        eval_data = data.pad_batches(eval_data, FLAGS.batch_size)
    return vocabulary, tokens_per_step, train_data, eval_data


def main(argv):
    del argv
    check_flags()
    scope = training_flags.start_run(fail)  # first: --multi_host
    from sgmoe import models

    training_flags.check_model_config(
        fail, models.MoELanguageModel,
        model_config(FLAGS.vocabulary_size or 8000))
    training_flags.claim_model_dir(fail)
    import keras

    from sgmoe import evaluation

    vocabulary, tokens_per_step, train_data, eval_data = load_data()
    setup = run_setup(vocabulary)
    with scope:
        model = build_model(len(vocabulary))
    eval_callbacks = training_flags.evaluation_callbacks()
    print(f"{FLAGS.preset}: vocabulary {len(vocabulary)} words, backend "
          f"{keras.backend.backend()}, {model.count_params():,} parameters")
    run = training_flags.training_run(fail, model, tokens_per_step, setup,
                                      eval_data)
    untrained = None
    if run.state:
        print(f"resumed from {run.state.path} at step {run.first_step}")
    else:
        untrained = evaluation.evaluate_perplexity(model, eval_data,
                                                   eval_callbacks)
    seconds = training_flags.fit(fail, run, train_data.skip)
    final = run.final_validation()  # --eval_every evaluated the end
    perplexity = (final["perplexity"] if final else
                  evaluation.evaluate_perplexity(model, eval_data,
                                                 eval_callbacks))
    training_flags.print_training_time(run, seconds, tokens_per_step,
                                       "words")
    print_expert_balance(model)
    training_flags.save_model(fail, model, vocabulary, setup,
                              {"validation_perplexity": perplexity})
    run.write_scalars({"perplexity": perplexity})  # next to the curves
    baseline = "" if untrained is None else f" (untrained: {untrained:.1f})"
    print(f"validation perplexity: {perplexity:.1f}{baseline}")


def run_setup(vocabulary):
    """What a resume of --model_dir must keep (`training_flags.run_setup`).
    """
    from sgmoe import data

    data_setup = dict(training_flags.text_input_setup(),
                      max_length=FLAGS.max_length)
    if FLAGS.split_sentences:  # other examples: a resume must split too
        data_setup["split_sentences"] = True
    return training_flags.run_setup(
        train_files=data.expand_file_patterns(FLAGS.train_files),
        vocabulary=vocabulary, data=data_setup,
        model=training_flags.model_setup(
            dict(model_overrides(), padding_id=0, seed=FLAGS.seed)))


def print_expert_balance(model):
    """Max / mean of the tokens each expert computed, per MoE layer, in
    the last call (the last evaluation batch)."""
    from sgmoe import layers
    from sgmoe import training

    for name, layer in layers.find_moe_layers(model).items():
        balance = training.moe_statistics(layer)["max_over_mean_dispatched"]
        print(f"{name}: tokens per expert max/mean {balance:.2f} on the "
              "last evaluation batch")


def run():
    """Parses `sys.argv` and runs `main`: `python scripts/train_lm.py`
    and the console script `sgmoe-train-lm`."""
    console.help_for_module(__name__)
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
