"""The training loop that the scripts share: resume, fit, checkpoint, log."""

import os
import time

import tensorflow as tf

from sgmoe import _validation
from sgmoe.distribute import processes
from sgmoe.training import _logs
from sgmoe.training.checkpointer import Checkpointer
from sgmoe.training.moe_tensorboard import MoETensorBoard
from sgmoe.training.progress_logger import ProgressLogger
from sgmoe.training.stop_on_non_finite_loss import StopOnNonFiniteLoss


class TrainingRun:
    """Trains a compiled model for a number of steps, resumably.

    Training runs as `train_steps / log_every` Keras epochs of `log_every`
    steps over one endless, seeded stream of batches, with a
    `ProgressLogger` line per epoch and `StopOnNonFiniteLoss`. With a
    `model_dir`, a `Checkpointer` writes `model_dir/checkpoints` every
    `checkpoint_every` steps and `MoETensorBoard` writes `model_dir/logs`;
    creating the run restores the newest checkpoint into the model, and
    `fit` then asks `make_dataset` for the stream with the batches that
    checkpoint had consumed skipped. The same command started again after
    a kill therefore continues where the last checkpoint left off.

    Args:
        model: a compiled, built model.
        train_steps: the global step to train to.
        log_every: steps per epoch (one progress line each); must divide
            `train_steps` and `checkpoint_every`.
        model_dir: directory for checkpoints and TensorBoard logs, or None.
        checkpoint_every: steps between checkpoints.
        tokens_per_step: tokens per step for the words/s figures, or None.

    Attributes:
        state: the restored `CheckpointState`, or None on a fresh start.
        first_step: the step training starts from.

    Example:

    run = TrainingRun(model, train_steps=600, log_every=100,
                      model_dir="/tmp/lm")
    seconds = run.fit(lambda skip: make_batches(skip_batches=skip))
    run.write_scalars({"bleu": 27.3})
    """

    def __init__(self, model, *, train_steps, log_every, model_dir=None,
                 checkpoint_every=100, tokens_per_step=None):
        self.model = model
        self.model_dir = model_dir
        self.train_steps = _validation.check_positive_int(
            "train_steps", train_steps)
        self.log_every = _validation.check_positive_int("log_every",
                                                        log_every)
        checkpoint_every = _validation.check_positive_int(
            "checkpoint_every", checkpoint_every)
        if train_steps % log_every:
            raise ValueError(f"`log_every` ({log_every}) must divide "
                             f"`train_steps` ({train_steps}).")
        if model_dir and checkpoint_every % log_every:
            raise ValueError(f"`log_every` ({log_every}) must divide "
                             f"`checkpoint_every` ({checkpoint_every}).")
        self.callbacks = [StopOnNonFiniteLoss(),
                          ProgressLogger(log_every, tokens_per_step)]
        self.state = None
        if model_dir:
            checkpointer = Checkpointer(model_dir,
                                        checkpoint_every=checkpoint_every)
            self.state = checkpointer.restore(model)
            self.callbacks.append(checkpointer)
            if processes.is_primary_process():  # one writer of the logs
                self.callbacks.append(MoETensorBoard(
                    os.path.join(model_dir, "logs"), update_freq=log_every,
                    tokens_per_step=tokens_per_step))
        self.first_step = self.state.step if self.state else 0

    @property
    def remaining_steps(self):
        return max(self.train_steps - self.first_step, 0)

    def fit(self, make_dataset):
        """Trains up to `train_steps`; returns the wall-clock seconds.

        Args:
            make_dataset: `f(skip_batches)` returning the endless training
                stream with its first `skip_batches` batches skipped.

        Raises:
            sgmoe.training.NonFiniteLossError: the loss became NaN or
                infinite (the last checkpoint is the last good state).
        """
        start = time.time()
        if self.remaining_steps:
            skip = self.state.data_position if self.state else 0
            self.model.fit(
                make_dataset(skip), steps_per_epoch=self.log_every,
                epochs=self.train_steps // self.log_every,
                initial_epoch=self.first_step // self.log_every,
                shuffle=False, verbose=0, callbacks=self.callbacks)
        return time.time() - start

    def write_scalars(self, scalars, run_name="validation"):
        """Writes scalars for TensorBoard, next to the training curves.

        Each value is tagged with its key, at the model's current step (its
        optimizer's `iterations`), in event files under
        `model_dir/logs/<run_name>`. Only process 0 writes; without a
        `model_dir` nothing is written.

        Args:
            scalars: {tag: number}, e.g. {"bleu": 27.3}.
            run_name: the TensorBoard run, a subdirectory of
                `model_dir/logs`.
        """
        if not self.model_dir or not processes.is_primary_process():
            return
        step = _logs.initial_step(self.model)
        writer = tf.summary.create_file_writer(
            os.path.join(self.model_dir, "logs", run_name))
        with writer.as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, float(value))
        writer.close()
