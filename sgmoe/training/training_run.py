"""The training loop that the scripts share: resume, fit, checkpoint, log."""

import os
import time
import warnings

import tensorflow as tf

from sgmoe import _validation
from sgmoe.distribute import processes
from sgmoe.training import _logs
from sgmoe.training import run_manifest
from sgmoe.training.checkpointer import Checkpointer
from sgmoe.training.model_dir_lock import lock_model_dir
from sgmoe.training.moe_tensorboard import MoETensorBoard
from sgmoe.training.periodic_evaluation import PeriodicEvaluation
from sgmoe.training.progress_logger import ProgressLogger
from sgmoe.training.stop_on_non_finite_loss import StopOnNonFiniteLoss


class TrainingRun:
    """Trains a compiled model for a number of steps, resumably.

    Training runs over one endless, seeded stream of batches, in Keras
    epochs of `log_every` steps (logging windows: a `ProgressLogger` line
    each, and the last one shorter when `log_every` does not divide the
    steps left), with `StopOnNonFiniteLoss`. With a `model_dir`, the run
    takes the directory's lock (`lock_model_dir`: a second run on it is
    refused), a `Checkpointer` writes `model_dir/checkpoints` every
    `checkpoint_every` steps and `MoETensorBoard` writes `model_dir/logs`;
    creating the run restores the newest checkpoint into the model, and
    `fit` then asks `make_dataset` for the stream with the batches that
    checkpoint had consumed skipped. The same command started again after
    a kill therefore continues where the last checkpoint left off, and
    ends at exactly `train_steps`; `train_steps`, `log_every` and
    `checkpoint_every` may differ between the runs (any positive values).
    With a `setup` (what the run was started with: data, vocabulary,
    model, batch size...; see `check_run_setup`), a resume with another
    one is refused before anything is restored, and the setup and the
    cadence are recorded in `model_dir/run.json` once the restore
    succeeded. With `eval_every`, a `PeriodicEvaluation` evaluates
    `validation_data` every `eval_every` steps and at `train_steps` (a
    line each, and `val/*` in `model_dir/logs/validation`) and keeps the
    model with the lowest validation loss in `model_dir/best`.

    Args:
        model: a compiled, built model.
        train_steps: the global step to train to.
        log_every: steps per logging window.
        model_dir: directory for checkpoints and TensorBoard logs, or None.
        checkpoint_every: steps between checkpoints (at multiples of it).
        tokens_per_step: tokens per step for the words/s figures, or None.
        setup: a JSON-serialisable dict, or None (nothing checked or
            recorded).
        validation_data: a finite dataset for `eval_every`, or None.
        eval_every: steps between validations, or None (none).
        evaluation_callbacks: passed to `model.evaluate` (e.g.
            `[sgmoe.distribute.SynchronousBatches()]` on a mesh), or None.

    Raises:
        ModelDirInUseError: another process holds `model_dir`'s lock.
        RunMismatchError: `model_dir` holds a run with another `setup`.
        CheckpointError, ValueError: checkpoints exist but none can be
            restored into `model` (see `Checkpointer.restore`).

    Attributes:
        state: the restored `CheckpointState`, or None on a fresh start.
        first_step: the step training starts from.
        periodic_evaluation: the `PeriodicEvaluation`, or None.

    Example:

    run = TrainingRun(model, train_steps=600, log_every=100,
                      model_dir="/tmp/lm")
    seconds = run.fit(lambda skip: make_batches(skip_batches=skip))
    run.write_scalars({"bleu": 27.3})
    """

    def __init__(self, model, *, train_steps, log_every, model_dir=None,
                 checkpoint_every=100, tokens_per_step=None, setup=None,
                 validation_data=None, eval_every=None,
                 evaluation_callbacks=None):
        self.model = model
        self.model_dir = model_dir
        self.train_steps = _validation.check_positive_int(
            "train_steps", train_steps)
        self.log_every = _validation.check_positive_int("log_every",
                                                        log_every)
        checkpoint_every = _validation.check_positive_int(
            "checkpoint_every", checkpoint_every)
        self.callbacks = [StopOnNonFiniteLoss(),
                          ProgressLogger(log_every, tokens_per_step,
                                         total_steps=train_steps)]
        if eval_every is not None:
            eval_every = _validation.check_positive_int("eval_every",
                                                        eval_every)
            if validation_data is None:
                raise ValueError("`eval_every` needs `validation_data`.")
        self.state = None
        if model_dir:
            if processes.is_primary_process():
                lock_model_dir(model_dir)
            if setup is not None:
                run_manifest.check_run_setup(model_dir, setup)
            checkpointer = Checkpointer(model_dir,
                                        checkpoint_every=checkpoint_every)
            self.state = checkpointer.restore(model)
            if setup is not None:
                run_manifest.record_run_setup(model_dir, setup, {
                    "train_steps": train_steps, "log_every": log_every,
                    "checkpoint_every": checkpoint_every})
            self.callbacks.append(checkpointer)
            # One process writes the logs; every process restarts the MoE
            # statistics windows at the same steps.
            self.callbacks.append(MoETensorBoard(
                os.path.join(model_dir, "logs"), update_freq=log_every,
                tokens_per_step=tokens_per_step,
                write=processes.is_primary_process()))
        self.periodic_evaluation = None
        if eval_every is not None:
            # After the logger and TensorBoard: they report the training
            # step before evaluation changes the MoE statistics.
            self.periodic_evaluation = PeriodicEvaluation(
                validation_data, eval_every, total_steps=train_steps,
                log_dir=model_dir and os.path.join(model_dir, "logs",
                                                   "validation"),
                best_dir=model_dir and os.path.join(model_dir, "best"),
                callbacks=evaluation_callbacks)
            self.callbacks.append(self.periodic_evaluation)
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
        steps = self.remaining_steps
        if steps:
            skip = self.state.data_position if self.state else 0
            # A finite stream: the last window ends when it runs out.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Your input ran out of data")
                self.model.fit(
                    make_dataset(skip).take(steps),
                    steps_per_epoch=self.log_every,
                    epochs=-(-steps // self.log_every), shuffle=False,
                    verbose=0, callbacks=self.callbacks)
        return time.time() - start

    def final_validation(self):
        """The logs of the validation `fit` ran at `train_steps` (with
        `eval_every`), or None: the final weights' evaluation, so a caller
        need not evaluate them again."""
        if self.periodic_evaluation is None:
            return None
        history = self.periodic_evaluation.history
        if history and history[-1][0] == self.train_steps:
            return history[-1][1]
        return None

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
                _logs.write_scalar(tag, value)
        writer.close()
