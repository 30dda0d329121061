"""TensorBoard summaries of Mixture-of-Experts routing and of training."""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata

from sgmoe import _validation
from sgmoe.training import _logs
from sgmoe.layers.moe_layer import find_moe_layers
from sgmoe.training.routing_statistics import moe_statistic_values
from sgmoe.training.routing_statistics import summarize_statistics


class MoETensorBoard(keras.callbacks.Callback):
    """Writes MoE routing statistics and training curves for TensorBoard.

    What Shazeer et al. 2017 (arXiv:1701.06538, §4 and Appendix A) watch to
    see whether experts are balanced, for each MoE layer, and the training
    curves. MoE statistics are means over the training steps since the
    last write (the layers' statistics windows, `MoELayer.window_statistics`,
    which this callback resets after each write), not one batch.

    Tags (a layer's name is its `path`; see
    `sgmoe.layers.find_moe_layers`):

    * `moe/<layer>/cv_importance`, `moe/<layer>/cv_load`: std / mean
      (population std, 0 when the mean is 0) of `expert_importance` and
      of the router's `expert_load` (for noisy top-k gating in training,
      the paper's smooth load estimator);
    * `moe/<layer>/cv_dispatched`: the same of `expert_dispatched`, the
      assignments each expert really computed;
    * `moe/<layer>/max_over_mean_load`, `moe/<layer>/max_over_mean_dispatched`:
      max / mean of `expert_load` and of `expert_dispatched`;
    * `moe/<layer>/dropped_fraction`: of the token-expert assignments;
    * `moe/<layer>/<loss name>` for each entry of `auxiliary_losses`
      (e.g. `importance_loss`, `load_loss`, `z_loss`);
    * histograms (if `histograms`) `moe/<layer>/expert_load`,
      `moe/<layer>/expert_dispatched` and `moe/<layer>/expert_dropped`:
      one bucket per expert, bucket i spanning [i, i + 1) with expert i's
      value (per step) as its count, so TensorBoard's histogram dashboard
      draws it per expert;
    * `train/loss` and `train/<metric>` for every logged metric: Keras's
      logs, i.e. the mean over the epoch so far;
    * `train/perplexity`: the logged metric whose name contains
      "perplexity" if there is one, else exp(`loss`). Keras's `loss`
      includes the auxiliary losses, so exp(loss) slightly overstates the
      perplexity; log a perplexity metric to get the exact value;
    * `train/words_per_second`: `tokens_per_step` tokens per step over the
      wall-clock time of the steps since the last write (the first write
      includes the time to compile the train step);
    * `train/learning_rate`: the rate the optimizer applied in the logged
      step (for a `LearningRateSchedule`, its value at that step);
    * at the end of each epoch, `val/<name>` for each `val_<name>` log and
      `val/perplexity`, computed as for training.

    The step of every value is the number of training steps taken, counted
    from the optimizer's `iterations` at the start of `fit`. Evaluation
    calls do not enter the statistics windows. The event files go straight
    into `log_dir`. TensorFlow writes them on every backend: values are
    read with `keras.ops.convert_to_numpy`.

    Args:
        log_dir: directory of the event files (e.g. the `--model_dir`).
        update_freq: write every this many training steps (a positive
            integer) and at the end of each epoch, or "epoch" for the end of
            each epoch only.
        tokens_per_step: tokens (words) processed per training step, for
            words per second: a number (e.g. batch size x target length), a
            callable `f(logs)` returning the tokens of the steps that just
            ended, or None to not write `train/words_per_second`.
        histograms: whether to write the per-expert histograms.
        write: False in every process of a multi-process run but the one
            that writes the logs: the callback then only starts the MoE
            statistics windows afresh at the same steps (assigning a
            variable is collective across processes).

    Example:

    model.fit(dataset, epochs=2, callbacks=[
        MoETensorBoard("/tmp/model_dir", update_freq=100,
                       tokens_per_step=64 * 20)])
    """

    def __init__(self, log_dir, update_freq=100, tokens_per_step=None,
                 histograms=True, write=True):
        super().__init__()
        self.log_dir = str(log_dir)
        self.write = bool(write)
        if update_freq != "epoch":
            try:
                update_freq = _validation.check_positive_int(
                    "update_freq", update_freq)
            except ValueError:
                raise ValueError(
                    "`update_freq` must be a positive integer or 'epoch', "
                    f"received update_freq={update_freq!r}.") from None
        self.update_freq = update_freq
        self.tokens_per_step = _logs.check_tokens_per_step(tokens_per_step)
        self.histograms = bool(histograms)
        self._writer = None
        self._steps = _logs.StepCounter()
        self._throughput = _logs.Throughput(self.tokens_per_step)
        self._logged_step = 0
        self._pending_logs = None

    def on_train_begin(self, logs=None):
        if self._writer is None and self.write:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        self._steps.step = _logs.initial_step(self.model)
        self._logged_step = self._steps.step
        self._pending_logs = None

    def on_epoch_begin(self, epoch, logs=None):
        self._throughput.reset()

    def on_train_batch_begin(self, batch, logs=None):
        self._steps.begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        num_steps = self._steps.end(batch)
        self._throughput.add(num_steps, logs)
        self._pending_logs = dict(logs or {})
        if (self.update_freq != "epoch"
                and self._steps.step // self.update_freq
                > self._logged_step // self.update_freq):
            self._write_training()

    def on_epoch_end(self, epoch, logs=None):
        self._write_training()
        logs = logs or {}
        if self._writer is None or not any(name.startswith("val_")
                                           for name in logs):
            return
        with self._writer.as_default(step=self._steps.step):
            _write_logs("val/", logs, prefix="val_")
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._write_training()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_training(self):
        """Writes the pending step's logs and MoE statistics, if any."""
        if self._pending_logs is None:
            return
        logs, self._pending_logs = self._pending_logs, None
        model = self.model  # On JAX, this syncs the variables' values.
        step = self._steps.step
        if not self.write:  # another process writes; the windows restart
            for layer in find_moe_layers(model).values():
                layer.reset_window()
            self._logged_step = step
            return
        with self._writer.as_default(step=step):
            _write_logs("train/", logs)
            words_per_second = self._throughput.tokens_per_second()
            if words_per_second is not None:
                _logs.write_scalar("train/words_per_second", words_per_second)
            if getattr(model, "optimizer", None) is not None:
                _logs.write_scalar("train/learning_rate",
                                  _logs.learning_rate(model.optimizer))
            for name, layer in find_moe_layers(model).items():
                self._write_layer(name, layer)
        self._writer.flush()
        self._logged_step = step
        self._throughput.reset()

    def _write_layer(self, name, layer):
        values = moe_statistic_values(layer, window=True)
        for statistic, value in summarize_statistics(values).items():
            _logs.write_scalar(f"moe/{name}/{statistic}", value)
        layer.reset_window()
        if not self.histograms:
            return
        for statistic, description in _HISTOGRAMS.items():
            counts = np.asarray(values[statistic], np.float64)
            edges = np.arange(counts.shape[0] + 1, dtype=np.float64)
            # [E, 3]: (left edge, right edge, count), TensorBoard's format.
            buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
            tf.summary.write(
                f"moe/{name}/{statistic}", tf.constant(buckets),
                metadata=histogram_metadata.create_summary_metadata(
                    display_name=f"{name} {statistic}",
                    description=description,
                ).SerializeToString())


_HISTOGRAMS = {
    "expert_load": "Bucket i: expert i's load (the router's), per step.",
    "expert_dispatched": "Bucket i: assignments expert i computed, per step.",
    "expert_dropped": "Bucket i: assignments to expert i dropped, per step.",
}


def _write_logs(tag_prefix, logs, prefix=""):
    """Scalars `<tag_prefix><name>` for the logs named `<prefix><name>`.

    Training logs (empty `prefix`) skip the "val_" entries. Always adds
    `<tag_prefix>perplexity` (see `_logs.perplexity`) when it can be had.
    """
    for name, value in sorted(logs.items()):
        value = _logs.as_float(value)
        if (value is None or not name.startswith(prefix)
                or (not prefix and name.startswith("val_"))):
            continue
        name = name[len(prefix):]
        if name != "perplexity":
            _logs.write_scalar(tag_prefix + name, value)
    value = _logs.perplexity(logs, prefix=prefix)
    if value is not None:
        _logs.write_scalar(tag_prefix + "perplexity", value)
