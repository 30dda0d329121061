"""A tiny MoE training run that resumes from its checkpoints (test driver).

Run as a subprocess by test_checkpointer.py: the same command line, started
again after a SIGKILL, must continue the run. It follows the resume scheme of
`sgmoe.training.Checkpointer`: one deterministic endless stream of batches,
`restore` before `fit`, the stream from batch `data_position` on, and Keras
epochs of `--steps_per_epoch` steps (a divisor of `--checkpoint_every`).

Each process appends to `--loss_file` (flushed per line):

    start <step> <data_position>
    <step> <logged loss> <numpy draw> <python draw>

where the draws come from generators whose state the checkpoints keep.

  python tests/training/checkpoint_driver.py --model_dir=DIR --loss_file=F
"""

import argparse
import math
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", ".."))

VOCAB = 32
LENGTH = 6
EXAMPLES = 48
BATCH = 4


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--loss_file", required=True)
    parser.add_argument("--train_steps", type=int, default=30)
    parser.add_argument("--steps_per_epoch", type=int, default=5)
    parser.add_argument("--checkpoint_every", type=int, default=10)
    parser.add_argument("--step_seconds", type=float, default=0.0,
                        help="Sleep after each step, so a test can kill the "
                             "run in the middle.")
    parser.add_argument("--seed", type=int, default=3)
    return parser.parse_args(argv)


def training_stream(seed, position=0):
    """The endless stream of training batches, from batch `position` on.

    Epoch e of the data is the permutation of the examples drawn from the
    seed (seed, e), so batch i is the same in every run, however many
    times or from wherever the stream is iterated. (A
    `shuffle(reshuffle_each_iteration=True)` stream is not: its order
    depends on how many iterators were made before, and Keras on JAX makes
    an extra one to build a model whose compiled loss is not built yet, so
    a first `fit` and a later one see different orders.) Starting at
    `position` skips whole epochs without reading them.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.RandomState(0)
    inputs = rng.randint(0, VOCAB, (EXAMPLES, LENGTH)).astype("int32")
    targets = (inputs * 7 + 3) % VOCAB
    start_epoch, offset = divmod(position * BATCH, EXAMPLES)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(EXAMPLES, dtype="int64"),
            seed=tf.stack([tf.constant(seed, "int64"), epoch]))
        return tf.data.Dataset.from_tensor_slices(order)

    return (tf.data.Dataset.range(start_epoch, 2 ** 62)
            .flat_map(epoch_order)
            .skip(offset)
            .batch(BATCH, drop_remainder=True)
            .map(lambda index: (tf.gather(inputs, index),
                                tf.gather(targets, index))))


def build_model(seed):
    import keras

    import sgmoe.layers

    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(tokens)
    x = keras.layers.Dropout(0.1, seed=seed)(x)
    # Noisy top-2 gating: the noise comes from the layer's SeedGenerator.
    x = x + sgmoe.layers.MixtureOfExperts(
        4, 16, k=2, capacity_factor=2.0, seed=seed, name="moe")(x)
    logits = keras.layers.Dense(VOCAB)(x)
    model = keras.Model(tokens, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True)
    return model


def main(argv):
    args = parse_args(argv)
    import keras
    import numpy as np

    from sgmoe.training import Checkpointer, StopOnNonFiniteLoss

    keras.utils.set_random_seed(args.seed)
    numpy_rng = np.random.default_rng(args.seed)
    python_rng = random.Random(args.seed)
    model = build_model(args.seed)
    checkpointer = Checkpointer(
        args.model_dir, checkpoint_every=args.checkpoint_every, keep=2,
        random_states={"numpy": numpy_rng, "python": python_rng})
    state = checkpointer.restore(model)
    step = state.step if state else 0
    position = state.data_position if state else 0
    loss_file = open(args.loss_file, "a")
    loss_file.write(f"start {step} {position}\n")
    loss_file.flush()

    class LossWriter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = step

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            loss = float(keras.ops.convert_to_numpy(logs["loss"]))
            loss_file.write(f"{self.step} {loss!r} {numpy_rng.random()!r} "
                            f"{python_rng.random()!r}\n")
            loss_file.flush()
            time.sleep(args.step_seconds)

    epochs = math.ceil(args.train_steps / args.steps_per_epoch)
    model.fit(training_stream(args.seed, position),
              steps_per_epoch=args.steps_per_epoch, epochs=epochs,
              initial_epoch=state.initial_epoch(args.steps_per_epoch)
              if state else 0,
              shuffle=False, verbose=0,
              callbacks=[StopOnNonFiniteLoss(), LossWriter(), checkpointer])
    loss_file.close()
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations.value))
    print(f"done step={step} data_position={checkpointer.data_position}",
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
