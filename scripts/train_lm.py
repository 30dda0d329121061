"""Trains a small LSTM-MoE language model on the bundled Brown corpus.

The paper's architecture in miniature (Shazeer et al. 2017, Appendix C.1):
embedding -> LSTM -> MoE -> LSTM -> softmax, with dropout after each layer
and residual connections, the MoE output through a sigmoid, and the MoE
seeing every timestep of the batch at once. With no flags it trains on
data/brown.train.txt.gz for a few minutes on a 2-core CPU and prints the
validation perplexity.

  python scripts/train_lm.py
  python scripts/train_lm.py --num_experts=32 --train_steps=1000
"""

import gzip
import math
import os
import sys
import time
from collections import Counter

from absl import app
from absl import flags

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "data")

FLAGS = flags.FLAGS
flags.DEFINE_string("train_file", os.path.join(DATA_DIR, "brown.train.txt.gz"),
                    "Tokenized training text, one sentence per line (.gz ok).")
flags.DEFINE_string("eval_file", os.path.join(DATA_DIR, "brown.valid.txt.gz"),
                    "Tokenized evaluation text, one sentence per line.")
flags.DEFINE_integer("vocab_size", 8000,
                     "Most frequent training words kept; others map to <UNK>.")
flags.DEFINE_integer("sequence_length", 32, "Tokens per training example.")
flags.DEFINE_integer("batch_size", 32, "Sequences per batch.")
flags.DEFINE_integer("train_steps", 600, "Optimizer steps.")
flags.DEFINE_integer("model_dim", 128, "Embedding, LSTM and MoE width.")
flags.DEFINE_integer("num_experts", 16, "Experts in the MoE layer.")
flags.DEFINE_integer("expert_hidden_dim", 256, "Hidden units per expert.")
flags.DEFINE_integer("k", 4, "Experts per token.")
flags.DEFINE_float("capacity_factor", 1.25, "Expert capacity factor.")
flags.DEFINE_float("dropout", 0.1, "Dropout after each layer.")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 1, "Random seed.")
flags.DEFINE_boolean("jit_compile", True, "Compile the train step with XLA.")

BOS, EOS, UNK = "<S>", "</S>", "<UNK>"


def read_sentences(path):
    """Sentences of a text file as lists of words; exits on unusable input."""
    if not os.path.isfile(path):
        sys.exit(f"train_lm: no such file: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as text:
            sentences = [line.split() for line in text if line.strip()]
    except (UnicodeDecodeError, OSError, EOFError) as error:
        sys.exit(f"train_lm: cannot read {path}: {error}")
    if not sentences:
        sys.exit(f"train_lm: {path} holds no sentences")
    return sentences


def build_vocabulary(sentences, size):
    """Word -> id: the special tokens, then words by descending count."""
    counts = Counter(word for sentence in sentences for word in sentence)
    words = [w for w, _ in counts.most_common(max(0, size - 3))]
    return {w: i for i, w in enumerate([BOS, EOS, UNK] + words)}


def to_windows(sentences, vocabulary, length):
    """Concatenates <S> sentence </S> ids and cuts [length + 1] windows."""
    import numpy as np

    unk = vocabulary[UNK]
    stream = []
    for sentence in sentences:
        stream.append(vocabulary[BOS])
        stream.extend(vocabulary.get(w, unk) for w in sentence)
        stream.append(vocabulary[EOS])
    num_windows = (len(stream) - 1) // length
    if num_windows < 1:
        sys.exit(f"train_lm: too little text for sequence_length={length}")
    ids = np.asarray(stream[:num_windows * length + 1], dtype="int32")
    inputs = ids[:-1].reshape(num_windows, length)
    targets = ids[1:].reshape(num_windows, length)
    return inputs, targets


def build_model(vocab_size):
    import keras

    import sgmoe

    dim, rate = FLAGS.model_dim, FLAGS.dropout
    tokens = keras.Input((FLAGS.sequence_length,), dtype="int32")
    x = keras.layers.Embedding(vocab_size, dim)(tokens)
    x = keras.layers.Dropout(rate)(x)
    h = keras.layers.LSTM(dim, return_sequences=True)(x)
    x = x + keras.layers.Dropout(rate)(h)
    h = sgmoe.layers.MixtureOfExperts(
        FLAGS.num_experts, FLAGS.expert_hidden_dim, k=FLAGS.k,
        capacity_factor=FLAGS.capacity_factor, output_activation="sigmoid",
        seed=FLAGS.seed, name="moe")(x)
    x = x + keras.layers.Dropout(rate)(h)
    h = keras.layers.LSTM(dim, return_sequences=True)(x)
    x = x + keras.layers.Dropout(rate)(h)
    logits = keras.layers.Dense(vocab_size, name="softmax")(x)
    return keras.Model(tokens, logits, name="moe_lm")


def main(argv):
    del argv
    import keras

    keras.utils.set_random_seed(FLAGS.seed)
    train_sentences = read_sentences(FLAGS.train_file)
    eval_sentences = read_sentences(FLAGS.eval_file)
    vocabulary = build_vocabulary(train_sentences, FLAGS.vocab_size)
    train_x, train_y = to_windows(train_sentences, vocabulary,
                                  FLAGS.sequence_length)
    eval_x, eval_y = to_windows(eval_sentences, vocabulary,
                                FLAGS.sequence_length)
    print(f"vocabulary {len(vocabulary)} words; {train_x.size} training and "
          f"{eval_x.size} evaluation tokens; backend {keras.backend.backend()}")

    model = build_model(len(vocabulary))
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=FLAGS.jit_compile)
    steps_per_epoch = min(FLAGS.train_steps, len(train_x) // FLAGS.batch_size)
    epochs = math.ceil(FLAGS.train_steps / steps_per_epoch)
    initial = model.evaluate(eval_x, eval_y, batch_size=FLAGS.batch_size,
                             verbose=0)
    start = time.time()
    model.fit(train_x, train_y, batch_size=FLAGS.batch_size, epochs=epochs,
              steps_per_epoch=steps_per_epoch, shuffle=True, verbose=2)
    seconds = time.time() - start
    loss = model.evaluate(eval_x, eval_y, batch_size=FLAGS.batch_size,
                          verbose=0)
    moe = model.get_layer("moe")
    load = keras.ops.convert_to_numpy(moe.expert_load)
    print(f"trained {epochs * steps_per_epoch} steps in {seconds:.0f}s "
          f"({epochs * steps_per_epoch * FLAGS.batch_size * FLAGS.sequence_length / seconds:.0f} words/s)")
    print(f"MoE load on the last evaluation batch: max/mean "
          f"{load.max() / load.mean():.2f}, dropped fraction "
          f"{float(moe.dropped_fraction):.3f}")
    print(f"validation perplexity: {math.exp(loss):.1f} "
          f"(untrained: {math.exp(initial):.1f})")


if __name__ == "__main__":
    app.run(main)
