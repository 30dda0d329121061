"""Stops training at the first non-finite loss, before anything is saved."""

import math

import keras

from sgmoe.training import _logs


class NonFiniteLossError(RuntimeError):
    """Raised by `StopOnNonFiniteLoss`; knows where training stopped.

    Attributes:
        step: the training step (counted from 1, over all epochs and fits
            of the optimizer) whose loss was not finite.
        epoch: the epoch of that step, counted from 1.
        loss: the non-finite value (nan, inf or -inf).
    """

    def __init__(self, message, step, epoch, loss):
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.loss = loss


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Ends `fit` with a clear error when the loss becomes NaN or infinite.

    After each training step it checks the logged loss and, if it is not
    finite, sets `model.stop_training` and raises `NonFiniteLossError`
    naming the step, the epoch and the value. Raising (unlike
    `keras.callbacks.TerminateOnNaN`'s default) means that no later hook
    runs: no `on_epoch_end` or `on_train_end`, so neither `ModelCheckpoint`
    nor `BackupAndRestore` writes the broken weights, and the last checkpoint
    on disk stays the last good one. Put this callback before any
    checkpointing callback in the `callbacks` list, so that it runs first
    after the step too.

    Keras logs the mean loss over the epoch so far, which stays finite until
    the first non-finite step and is not finite from that step on: the
    reported step is the first bad one. With `steps_per_execution` > 1 the
    loss is seen once per execution, and the step is the last of it.

    Args:
        monitor: the log entry to check (default "loss").

    Example:

    model.fit(dataset, callbacks=[
        StopOnNonFiniteLoss(),
        keras.callbacks.ModelCheckpoint("ckpt.weights.h5",
                                        save_weights_only=True)])
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError("`monitor` must be the name of a log entry, "
                             f"received monitor={monitor!r}.")
        self.monitor = monitor
        self._steps = _logs.StepCounter()
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._steps.step = _logs.initial_step(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._steps.begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        self._steps.end(batch)
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = _logs.as_float(value)
        if value is None or math.isfinite(value):
            return
        self.model.stop_training = True
        step, epoch = self._steps.step, self._epoch + 1
        raise NonFiniteLossError(
            f"Training stopped: {self.monitor} is {value} at step {step} "
            f"(epoch {epoch}, batch {batch + 1} of the epoch). The weights "
            "after this step are not usable and were not saved: the last "
            "checkpoint written before it is the last good one. Restore it, "
            "then lower the learning rate or inspect this step's data.",
            step=step, epoch=epoch, loss=value)
