"""Reading a logged value over training back from TensorBoard event files."""

import os

import numpy as np


def logged_history(log_dir, tag):
    """The values of summary `tag` in the event files of `log_dir`, by step.

    Reads what `keras.callbacks.TensorBoard`, `sgmoe.training.MoETensorBoard`
    and `tf.summary` write (scalars and histograms, stored as tensors). A
    step logged twice, by a run resumed from a checkpoint older than its
    logs, keeps its last value.

    Args:
        log_dir: a directory of event files (e.g. `<model_dir>/logs/val`).
        tag: the summary's name, e.g. "epoch_loss" or
            "moe/moe_1/expert_dispatched".

    Returns:
        {step: numpy array} in step order, or None when `log_dir` does
        not exist or holds no summary `tag`.
    """
    from tensorboard.backend.event_processing import (
        plugin_event_accumulator as event_accumulator)
    from tensorboard.util import tensor_util

    if not os.path.isdir(log_dir):
        return None
    accumulator = event_accumulator.EventAccumulator(
        log_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    if tag not in accumulator.Tags().get("tensors", []):
        return None
    by_step = {}
    for event in accumulator.Tensors(tag):
        by_step[int(event.step)] = np.asarray(
            tensor_util.make_ndarray(event.tensor_proto))
    return dict(sorted(by_step.items()))
