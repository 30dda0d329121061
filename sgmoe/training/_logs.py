"""Helpers shared by the training callbacks: log values, steps, throughput."""

import math
import numbers
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

_FLOAT32_MAX = float(np.finfo(np.float32).max)

# Read through the module so that tests can substitute a fake clock.
monotonic_clock = time.perf_counter


def check_tokens_per_step(tokens_per_step):
    """None, a positive number, or a callable `f(logs) -> tokens`."""
    if tokens_per_step is None or callable(tokens_per_step):
        return tokens_per_step
    if (isinstance(tokens_per_step, bool)
            or not isinstance(tokens_per_step, numbers.Real)
            or not tokens_per_step > 0):
        raise ValueError(
            "`tokens_per_step` must be None, a positive number or a callable "
            "taking the batch logs, received "
            f"tokens_per_step={tokens_per_step!r}.")
    return tokens_per_step


def as_float(value):
    """A Python float from a log entry or a tensor; None if not a number."""
    try:
        array = np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.shape != ():
        return None
    return float(array)


def perplexity(logs, prefix=""):
    """The perplexity of logs: a perplexity metric if logged, else exp(loss).

    A metric counts as a perplexity if its name (after `prefix`, e.g. "val_")
    contains "perplexity" (validation logs, "val_...", are never training
    logs); the first such name in sorted order is used.
    Returns None when neither a perplexity metric nor the loss is logged.
    """
    names = sorted(name for name in logs if name.startswith(prefix)
                   and "perplexity" in name[len(prefix):]
                   and (prefix or not name.startswith("val_")))
    if names:
        return as_float(logs[names[0]])
    loss = logs.get(prefix + "loss")
    if loss is None:
        return None
    loss = as_float(loss)
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def print_fields(fields, print_fn=None):
    """Prints `key=value` fields as one line with `print_fn` (default:
    `print`, flushed, so the line shows at once in a log file)."""
    line = " ".join(fields)
    if print_fn is None:
        print(line, flush=True)
    else:
        print_fn(line)


def write_scalar(tag, value):
    """`tf.summary.scalar(tag, value)` for any real `value`, never raising.

    TensorBoard stores scalars as float32: a finite value beyond its range
    (the perplexity exp(loss) of a loss above about 88.7, early in a run or
    at a loss spike) is written as +-inf instead of failing the write and,
    with it, training.
    """
    value = float(value)
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        value = math.copysign(math.inf, value)
    tf.summary.scalar(tag, value)


def initial_step(model):
    """Training steps already taken: the optimizer's iteration count."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    return int(ops.convert_to_numpy(optimizer.iterations))


def learning_rate(optimizer):
    """The learning rate the optimizer applied in its last step.

    For a `LearningRateSchedule` that is the schedule at the number of
    completed iterations minus one (Keras evaluates the schedule before it
    increments `iterations`); otherwise the optimizer's current rate.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = getattr(inner, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        last_step = max(int(ops.convert_to_numpy(inner.iterations)) - 1, 0)
        return as_float(schedule(last_step))
    return as_float(optimizer.learning_rate)


class Throughput:
    """Counts tokens between two points in time and gives tokens per second.

    The window ends at the end of the last counted batch, so time spent after
    it (validation, logging) is not counted.
    """

    def __init__(self, tokens_per_step):
        self.tokens_per_step = tokens_per_step
        self.reset()

    def reset(self):
        self.tokens = 0.0
        self.start = monotonic_clock()
        self.end = None

    def add(self, num_steps, logs):
        if self.tokens_per_step is None:
            return
        if callable(self.tokens_per_step):
            self.tokens += float(self.tokens_per_step(logs))
        else:
            self.tokens += num_steps * float(self.tokens_per_step)
        self.end = monotonic_clock()

    def tokens_per_second(self):
        """None if tokens are not counted or no batch ended in the window."""
        if self.end is None or not self.end > self.start:
            return None
        return self.tokens / (self.end - self.start)


class StepCounter:
    """The global training step across `on_train_batch_begin`/`_end` pairs.

    With `steps_per_execution` > 1 Keras reports the first and the last batch
    of each execution, so one `end` call can complete several steps.
    """

    def __init__(self):
        self.step = 0
        self._batch_begin = 0

    def begin(self, batch):
        self._batch_begin = batch

    def end(self, batch):
        """Advances the step; returns the number of steps just completed."""
        num_steps = max(batch - self._batch_begin + 1, 1)
        self.step += num_steps
        return num_steps
