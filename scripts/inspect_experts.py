"""Shows what the experts of a trained language model serve (Table 9).

For each MoE layer of the model that scripts/train_lm.py wrote to
--model_dir, routes --text_files through it in inference and prints, for
the most used experts, their share of the assignments, their
characteristic words (the highest mean gate value over every occurrence
of the word) and the contexts of their highest gate values, as the
paper's Table 9 does. It also draws each expert's share of the
assignments over training, from the TensorBoard logs of the run, as a
heatmap (--heatmap).

  python scripts/train_lm.py --model_dir=/tmp/lm
  python scripts/inspect_experts.py --model_dir=/tmp/lm
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, _SCRIPTS_DIR)

import console  # noqa: E402
import training_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None,
                    "The --model_dir of a finished train_lm.py run.")
flags.DEFINE_string(
    "text_files", os.path.join(console.data_dir(), "brown.valid.txt.gz"),
    "Comma-separated globs of tokenized text, one sentence per line, to "
    "route. Default: the bundled Brown validation split.")
flags.DEFINE_integer("max_sentences", 2000,
                     "Route the first this many sentences.")
flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
flags.DEFINE_integer("experts", 8,
                     "Experts to show per layer, the most used first.")
flags.DEFINE_integer("words", 8, "Characteristic words per expert.")
flags.DEFINE_integer("contexts", 3,
                     "Highest-gate contexts per expert.")
flags.DEFINE_integer("min_count", 5,
                     "Least occurrences of a word ranked for an expert.")
flags.DEFINE_string(
    "heatmap", None,
    "Where to write the load heatmap (PNG). Default: "
    "MODEL_DIR/expert_load.png; empty: none. An existing file is replaced.")
training_flags.define_text_input_flags()
flags.adopt_module_key_flags(training_flags)
flags.mark_flag_as_required("model_dir")


def fail(message):
    sys.exit(f"inspect_experts: {console.one_line(message)}")


def read_sentences(vocabulary):
    """Input ids (`<S>` and the words) of the first --max_sentences."""
    from sgmoe import data

    sentences = []
    for path in data.expand_file_patterns(FLAGS.text_files):
        for line in data.read_text_lines(path,
                                         **training_flags.text_input()):
            words = line.split()
            if words:
                sentences.append([vocabulary.bos_id] + [
                    vocabulary.token_to_id(word) for word in words])
            if len(sentences) == FLAGS.max_sentences:
                return sentences
    return sentences


def print_layer(text, name, vocabulary):
    from sgmoe import evaluation

    profiles = evaluation.expert_profiles(
        text, name, min_count=FLAGS.min_count, num_words=FLAGS.words,
        num_contexts=FLAGS.contexts)
    routing = text.layers[name]
    print(f"\n{name}: {routing.num_experts} experts, {len(routing.expert)} "
          f"assignments of {len(text.token_ids)} tokens in "
          f"{len(text.sentences)} sentences")
    for profile in profiles[:FLAGS.experts]:
        print(f"expert {profile.expert}: {profile.share:.1%} of the "
              f"assignments, mean gate {profile.mean_weight:.2f}")
        words = ", ".join(f"{vocabulary.id_to_token(word)} {score:.2f}"
                          for word, score, _ in profile.words)
        print(f"  words: {words or '-'}")
        for token, weight in profile.contexts:
            *left, word = (vocabulary.id_to_token(i) for i in
                           evaluation.context_of(text, token))
            print(f"  {weight:.2f}  ... {' '.join(left)} [{word}]")


def plot_heatmaps(names, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from sgmoe import evaluation

    log_dir = os.path.join(FLAGS.model_dir, "logs")
    histories = {name: evaluation.expert_load_history(log_dir, name)
                 for name in names}
    histories = {name: h for name, h in histories.items() if h is not None}
    if not histories:
        print(f"\nno heatmap: {log_dir} holds no expert load histograms")
        return
    figure, axes = pyplot.subplots(len(histories), 1, squeeze=False,
                                   figsize=(8, 2.5 + 2.5 * len(histories)))
    for axis, (name, (steps, shares)) in zip(axes[:, 0], histories.items()):
        image = axis.imshow(shares, aspect="auto", interpolation="nearest",
                            extent=(-0.5, shares.shape[1] - 0.5,
                                    len(steps) - 0.5, -0.5))
        axis.xaxis.set_major_locator(
            matplotlib.ticker.MaxNLocator(integer=True))
        ticks = sorted({0, len(steps) // 2, len(steps) - 1})
        axis.set_yticks(ticks, [str(steps[i]) for i in ticks])
        axis.set(title=f"{name}: share of the assignments per expert",
                 xlabel="expert", ylabel="training step")
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"\nwrote {path}")


def main(argv):
    del argv
    for name in ("max_sentences", "batch_size", "experts", "words",
                 "contexts", "min_count"):
        if getattr(FLAGS, name) < 1:
            fail(f"--{name} must be positive, received {getattr(FLAGS, name)}")
    console.plain_warnings()
    logging.set_verbosity(logging.WARNING)  # TensorBoard's event reader
    console.import_quietly()
    from sgmoe import data
    from sgmoe import evaluation
    from sgmoe import models

    model_path = os.path.join(FLAGS.model_dir, "model")
    try:
        if evaluation.saved_model_class(model_path) is not (
                models.MoELanguageModel):
            fail(f"{model_path} is not a language model: inspect_experts "
                 "reads the model of a train_lm.py run")
        vocabulary = data.WordVocabulary.load(FLAGS.model_dir)
        sentences = read_sentences(vocabulary)
    except (FileNotFoundError, ValueError) as error:
        fail(error)
    if not sentences:
        fail(f"--text_files={FLAGS.text_files} holds no sentence")
    model = models.MoELanguageModel.from_preset(model_path)
    text = evaluation.route_sentences(model, sentences, FLAGS.batch_size)
    if not text.layers:
        fail(f"{model_path} has no MoE layer")
    for name in text.layers:
        print_layer(text, name, vocabulary)
    heatmap = (os.path.join(FLAGS.model_dir, "expert_load.png")
               if FLAGS.heatmap is None else FLAGS.heatmap)
    if heatmap:
        plot_heatmaps(list(text.layers), heatmap)


def run():
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
