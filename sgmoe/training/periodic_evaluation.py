"""Validation during training, and the best model it finds."""

import json
import math
import os

import keras
import tensorflow as tf
from keras import ops

from sgmoe import _validation
from sgmoe.distribute import processes
from sgmoe.evaluation.logged_history import logged_history
from sgmoe.training import _logs
from sgmoe.training.save_model_preset import save_model_preset

BEST_METADATA_FILE = "validation.json"


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates the model every `every` training steps, keeping the best.

    At every step that is a multiple of `every`, and at `total_steps`, the
    callback runs `model.evaluate(validation_data)` and then puts the
    training metrics back as they were (Keras resets every metric when it
    evaluates), so the training logs of the window keep their means. The
    loss in evaluation is the cross-entropy alone: the MoE layers add their
    auxiliary losses only in training. It prints one line

        step=200/600 val_loss=4.1302 val_perplexity=62.19 best

    writes `val/loss`, `val/perplexity` and `val/<metric>` for TensorBoard
    into `log_dir`, and, with `best_dir`, saves the model there (with
    `save_model_preset`, swapped in whole) whenever the validation loss is
    the lowest so far, with `best_dir/validation.json` recording its step
    and logs. A run resumed later reads that file, so `best_dir` keeps the
    best model over every run of the same directory.

    With a `log_dir`, when training starts at a step past 0 at which an
    evaluation is due (a resumed run) and `log_dir` holds no validation of
    that step, the callback first evaluates the model it starts from: a
    run stopped after its checkpoint at such a step and before the
    validation there leaves no gap in its validation curve. (Every process
    reads `log_dir` to decide, as it reads `best_dir`: a shared
    filesystem.)

    Every process of a multi-process run must have the callback (the
    evaluation and the save are collectives); only process 0 writes.

    Args:
        validation_data: a finite dataset of (inputs, targets) batches.
        every: steps between evaluations (a positive integer).
        total_steps: the last training step (also evaluated), or None.
        log_dir: directory for TensorBoard event files, or None.
        best_dir: directory of the best model, or None.
        callbacks: a list passed to `model.evaluate`, or None.
        print_fn: called with each line; defaults to `print` (flushed).

    Attributes:
        best_loss: the lowest validation loss so far (inf before any).
        history: [(step, {log: value})] of this run's evaluations.

    Example:

    model.fit(train_data, epochs=6, steps_per_epoch=100, callbacks=[
        PeriodicEvaluation(eval_data, every=200, total_steps=600,
                           best_dir="/tmp/lm/best")])
    """

    def __init__(self, validation_data, every, *, total_steps=None,
                 log_dir=None, best_dir=None, callbacks=None,
                 print_fn=None):
        super().__init__()
        self.validation_data = validation_data
        self.every = _validation.check_positive_int("every", every)
        self.total_steps = _validation.check_optional_positive_int(
            "total_steps", total_steps)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.best_dir = None if best_dir is None else os.fspath(best_dir)
        self.evaluation_callbacks = list(callbacks or ())
        self.print_fn = print_fn
        self.best_loss = math.inf
        self.history = []
        self._steps = _logs.StepCounter()
        self._writer = None
        self._due = False

    def on_train_begin(self, logs=None):
        self._steps.step = _logs.initial_step(self.model)
        self.best_loss = _read_best_loss(self.best_dir)
        if (self.log_dir is not None and self._writer is None
                and processes.is_primary_process()):
            self._writer = tf.summary.create_file_writer(self.log_dir)
        step = self._steps.step
        if (step > 0 and self.log_dir is not None
                and (step % self.every == 0 or step == self.total_steps)
                and step not in self._validated_steps()):
            self.evaluate(step)

    def _validated_steps(self):
        logged = logged_history(self.log_dir, "val/loss") or {}
        return set(logged) | {step for step, _ in self.history}

    def on_train_batch_begin(self, batch, logs=None):
        self._steps.begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        previous = self._steps.step
        self._steps.end(batch)
        step = self._steps.step
        if (step // self.every > previous // self.every
                or (self.total_steps is not None
                    and previous < self.total_steps <= step)):
            if (batch + 1 == (self.params or {}).get("steps")
                    or (self.total_steps is not None
                        and step >= self.total_steps)):
                self._due = True  # after the epoch's progress line
            else:
                self.evaluate(step)

    def on_epoch_end(self, epoch, logs=None):
        if self._due:
            self._due = False
            self.evaluate(self._steps.step)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def evaluate(self, step):
        """Evaluates now, as at training step `step`; returns the logs."""
        model = self.model  # On JAX, this syncs the variables' values.
        saved = [ops.convert_to_numpy(v) for v in model.metrics_variables]
        results = model.evaluate(self.validation_data, verbose=0,
                                 return_dict=True,
                                 callbacks=self.evaluation_callbacks)
        for variable, value in zip(model.metrics_variables, saved):
            variable.assign(value)
        results = {name: _logs.as_float(value)
                   for name, value in results.items()}
        results = {name: value for name, value in results.items()
                   if value is not None}
        if "loss" not in results:
            raise ValueError(
                "The validation data gave no loss (is it empty?); logs: "
                f"{sorted(results)}.")
        perplexity = _logs.perplexity(results)
        if perplexity is not None:
            results["perplexity"] = perplexity
        self.history.append((step, results))
        best = results["loss"] < self.best_loss
        if best:
            self.best_loss = results["loss"]
            if self.best_dir is not None:
                save_model_preset(model, self.best_dir, extra_files={
                    BEST_METADATA_FILE: json.dumps(
                        {"step": step, "logs": results}, indent=1)})
        self._write(step, results)
        self._emit(step, results, best)
        return results

    def _write(self, step, results):
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in sorted(results.items()):
                _logs.write_scalar(f"val/{name}", value)
        self._writer.flush()

    def _emit(self, step, results, best):
        total = "" if self.total_steps is None else f"/{self.total_steps}"
        fields = [f"step={step}{total}", f"val_loss={results['loss']:.4f}"]
        fields += [f"val_{name}={value:.4f}"
                   for name, value in sorted(results.items())
                   if name not in ("loss", "perplexity")]
        if "perplexity" in results:
            fields.append(f"val_perplexity={results['perplexity']:.2f}")
        if best:
            fields.append("best")
        _logs.print_fields(fields, self.print_fn)


def _read_best_loss(best_dir):
    """The validation loss `best_dir` was saved at, or inf."""
    if best_dir is None:
        return math.inf
    try:
        with open(os.path.join(best_dir, BEST_METADATA_FILE)) as file:
            return float(json.load(file)["logs"]["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf
