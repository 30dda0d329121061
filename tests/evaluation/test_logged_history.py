"""`logged_history`: a summary's values by step, read back from event files."""

import numpy as np
import tensorflow as tf

from sgmoe.evaluation import logged_history


def _write(log_dir, tag, values):
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for step, value in values:
            tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_values_by_step_and_a_resumed_run_keeps_the_last(tmp_path):
    _write(tmp_path, "val/perplexity", [(10, 90.0), (20, 80.0), (30, 75.0)])
    # A run resumed from step 20 logs steps 30 and 40 again.
    _write(tmp_path, "val/perplexity", [(30, 70.0), (40, 65.0)])
    _write(tmp_path, "val/loss", [(10, 4.5)])
    history = logged_history(str(tmp_path), "val/perplexity")
    assert list(history) == [10, 20, 30, 40]
    np.testing.assert_allclose([float(v) for v in history.values()],
                               [90.0, 80.0, 70.0, 65.0])


def test_missing_directory_or_tag_is_none(tmp_path):
    assert logged_history(str(tmp_path / "absent"), "val/perplexity") is None
    _write(tmp_path, "val/loss", [(1, 4.0)])
    assert logged_history(str(tmp_path), "val/perplexity") is None
