"""The corpus perplexity of a compiled language model on a dataset."""

import keras

from sgmoe.data.data_error import DataError


def evaluate_perplexity(model, dataset, callbacks=None):
    """Runs `model.evaluate` over `dataset`; returns its perplexity.

    The model must be compiled with a `sgmoe.models.Perplexity` metric
    under its default name, "perplexity"; the value is that metric over
    the whole dataset (the corpus perplexity), not a mean over batches.
    A dataset that yields no batch (its files are empty, or a length
    limit filtered out every sentence) raises a `DataError`, found out
    during the one evaluation pass, instead of a perplexity of nothing.

    Args:
        model: a compiled, built language model.
        dataset: batches of (inputs, targets), as `model.evaluate` takes
            them.
        callbacks: a list passed to `model.evaluate` (e.g.
            `[sgmoe.distribute.SynchronousBatches()]` on a mesh), or None.

    Returns:
        The perplexity, a Python float.

    Raises:
        DataError: `dataset` yields no batch.
        ValueError: the model logs no "perplexity" metric.

    Example:

    model.compile(optimizer="adam", metrics=[Perplexity(padding_id=0)])
    perplexity = evaluate_perplexity(model, eval_data)
    """
    recorder = _SawBatch()
    try:
        results = model.evaluate(dataset, verbose=0, return_dict=True,
                                 callbacks=[*(callbacks or ()), recorder])
    except StopIteration:
        # The JAX trainer builds unbuilt metrics from the first batch and
        # lets StopIteration out when there is none.
        recorder.saw_batch = False
    if not recorder.saw_batch:
        raise DataError(
            "no evaluation batches: every sentence was filtered out (by a "
            "length limit) or the files are empty")
    if "perplexity" not in results:
        raise ValueError(
            "`model` must be compiled with a sgmoe.models.Perplexity metric "
            "named 'perplexity'; its evaluation logs "
            f"{sorted(results)}.")
    return float(results["perplexity"])


class _SawBatch(keras.callbacks.Callback):
    """Records whether `model.evaluate` finished at least one step."""

    # Setting a flag is safe on Keras's callback threads, so evaluation
    # steps are still dispatched asynchronously.
    async_safe = True

    def __init__(self):
        super().__init__()
        self.saw_batch = False

    def on_test_batch_end(self, batch, logs=None):
        # Not batch begin: the TensorFlow trainer begins a step before it
        # finds that the dataset has run out.
        self.saw_batch = True
