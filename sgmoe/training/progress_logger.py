"""Plain-text progress lines for long training runs."""

import keras

from sgmoe import _validation
from sgmoe.training import _logs


class ProgressLogger(keras.callbacks.Callback):
    """Prints one line of progress every `log_every` training steps.

    Lines are plain `key=value` fields, one line per report, so they read
    well in log files (unlike the in-place progress bar):

        step=200/600 loss=4.6012 perplexity=99.60 words/s=12850.3 elapsed=0:00:31 eta=0:01:02

    and at the end of each epoch the same with the epoch's words per second
    and the validation logs, when there are any (`val_loss=...
    val_perplexity=...`).

    `step` is the global step (the optimizer's iterations), out of
    `total_steps` when that is given. `loss` is Keras's logged loss, the
    mean over the epoch so far; `perplexity` is the logged metric whose
    name contains "perplexity" if there is one, else exp(loss) (which
    includes the auxiliary losses). `words/s` counts `tokens_per_step`
    tokens per step over the wall-clock time of the steps since the last
    line (the first includes compilation); it is left out when
    `tokens_per_step` is None. `elapsed` is the time since `fit` began;
    `eta`, with `total_steps`, the steps left at the pace of the steps
    since the first line (which leaves compilation out), or of the first
    window while there is only one. Pass `verbose=0` to `fit` to keep only
    these lines.

    Args:
        log_every: steps between two lines (a positive integer).
        tokens_per_step: tokens per training step: a number, a callable
            `f(logs)` returning the tokens of the steps that just ended, or
            None.
        print_fn: called with each line; defaults to `print` (flushed).
        total_steps: the step training ends at, for `step=N/TOTAL` and
            `eta`; None leaves both out.

    Example:

    model.fit(dataset, verbose=0, callbacks=[
        ProgressLogger(log_every=100, tokens_per_step=64 * 20,
                       total_steps=600)])
    """

    def __init__(self, log_every=100, tokens_per_step=None, print_fn=None,
                 total_steps=None):
        super().__init__()
        self.log_every = _validation.check_positive_int("log_every", log_every)
        self.tokens_per_step = _logs.check_tokens_per_step(tokens_per_step)
        self.print_fn = print_fn
        self.total_steps = _validation.check_optional_positive_int(
            "total_steps", total_steps)
        self._steps = _logs.StepCounter()
        self._window = _logs.Throughput(self.tokens_per_step)
        self._epoch_throughput = _logs.Throughput(self.tokens_per_step)
        self._last_logs = {}
        self._start = None  # (step, time) fit began at
        self._pace_from = None  # (step, time) of the first line

    def on_train_begin(self, logs=None):
        self._steps.step = _logs.initial_step(self.model)
        self._start = (self._steps.step, _logs.monotonic_clock())
        self._pace_from = None

    def on_epoch_begin(self, epoch, logs=None):
        self._window.reset()
        self._epoch_throughput.reset()
        self._last_logs = {}

    def on_train_batch_begin(self, batch, logs=None):
        self._steps.begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        previous = self._steps.step
        num_steps = self._steps.end(batch)
        self._window.add(num_steps, logs)
        self._epoch_throughput.add(num_steps, logs)
        self._last_logs = dict(logs or {})
        # The last batch of an epoch gets the epoch line instead.
        ends_epoch = batch + 1 == (self.params or {}).get("steps")
        if (self._steps.step // self.log_every > previous // self.log_every
                and not ends_epoch):
            _logs.print_fields(self._fields(self._last_logs, self._window),
                              self.print_fn)
            self._window.reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or self._last_logs)
        fields = self._fields(logs, self._epoch_throughput, timing=False)
        for name in sorted(logs):
            value = _logs.as_float(logs[name])
            if (name.startswith("val_") and value is not None
                    and name != "val_perplexity"):
                fields.append(f"{name}={value:.4f}")
        val_perplexity = _logs.perplexity(logs, prefix="val_")
        if val_perplexity is not None:
            fields.append(f"val_perplexity={val_perplexity:.2f}")
        _logs.print_fields(fields + self._timing(), self.print_fn)

    def _fields(self, logs, throughput, timing=True):
        step = self._steps.step
        fields = [f"step={step}" if self.total_steps is None
                  else f"step={step}/{self.total_steps}"]
        loss = logs.get("loss")
        if loss is not None and _logs.as_float(loss) is not None:
            fields.append(f"loss={_logs.as_float(loss):.4f}")
        perplexity = _logs.perplexity(logs)
        if perplexity is not None:
            fields.append(f"perplexity={perplexity:.2f}")
        words_per_second = throughput.tokens_per_second()
        if words_per_second is not None:
            fields.append(f"words/s={words_per_second:.1f}")
        return fields + self._timing() if timing else fields

    def _timing(self):
        """elapsed= and, with total_steps, eta=; moves the pace's start to
        the first line."""
        now = _logs.monotonic_clock()
        fields = [f"elapsed={_clock(now - self._start[1])}"]
        step = self._steps.step
        from_step, from_time = self._pace_from or self._start
        if self.total_steps is not None and step > from_step:
            seconds_per_step = (now - from_time) / (step - from_step)
            left = max(self.total_steps - step, 0)
            fields.append(f"eta={_clock(left * seconds_per_step)}")
        if self._pace_from is None:
            self._pace_from = (step, now)
        return fields



def _clock(seconds):
    """H:MM:SS of a number of seconds."""
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
